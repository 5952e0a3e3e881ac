// The build writes the dashboard into the Python package, which serves it at /ui/
// (src/streamgauge/faces/ui.py). Relative asset URLs: the page works under any mount point.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: "../src/streamgauge/faces/ui_static",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
});
