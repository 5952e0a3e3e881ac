// The stations on a map drawn with Leaflet and no tile layer (no network beyond the server):
// the countries of Natural Earth (world-atlas, 1:50m, a file served with the page), a
// graticule of latitude/longitude lines, and a marker per site.

import L from "leaflet";
import "leaflet/dist/leaflet.css";
import { feature } from "topojson-client";
import type { GeometryCollection, Topology } from "topojson-specification";
import countriesUrl from "world-atlas/countries-50m.json?url";
import type { Site } from "./api";

export type Health = "fresh" | "stale" | "qc" | "none";

const COLORS: Record<Health, string> = {
  fresh: "#1a7f37",
  stale: "#8c959f",
  qc: "#cf222e",
  none: "#57606a",
};

export class StationMap {
  private map: L.Map;
  private layer = L.layerGroup();
  private grid = L.layerGroup();
  private markers = new Map<string, L.CircleMarker>();
  private selected: string | null = null;

  constructor(
    el: HTMLElement,
    private readonly onPick: (site: string) => void,
  ) {
    this.map = L.map(el, {
      attributionControl: false,
      zoomSnap: 0.25,
      worldCopyJump: false,
    }).setView([0, 0], 2);
    this.grid.addTo(this.map);
    this.layer.addTo(this.map);
    void this.drawCountries();
  }

  /** The background: country shapes, loaded once from the server (the page's own asset). */
  private async drawCountries(): Promise<void> {
    try {
      const r = await fetch(countriesUrl);
      const world = (await r.json()) as Topology<{ countries: GeometryCollection }>;
      const shapes = feature(world, world.objects.countries);
      const land = L.geoJSON(shapes, {
        interactive: false,
        style: { color: "#a8b3bd", weight: 1, fillColor: "#f5f3ee", fillOpacity: 1 },
      });
      land.addTo(this.map);
      land.bringToBack();
      this.map.getContainer().dataset.background = "countries";
    } catch {
      this.map.getContainer().dataset.background = "none"; // the graticule alone still orients
    }
  }

  /** Show ``sites`` (those with coordinates); returns how many have none. */
  show(sites: Site[]): number {
    this.layer.clearLayers();
    this.markers.clear();
    const placed = sites.filter((s) => s.lat !== null && s.lon !== null);
    for (const s of placed) {
      const m = L.circleMarker([s.lat as number, s.lon as number], {
        radius: 8,
        weight: 2,
        color: "#fff",
        fillColor: COLORS.none,
        fillOpacity: 0.9,
        className: `station station-${cssId(s.id)}`,
      });
      m.bindTooltip(s.name || s.id, { permanent: placed.length <= 8, direction: "right" });
      m.on("click", () => this.onPick(s.id));
      m.addTo(this.layer);
      this.markers.set(s.id, m);
    }
    if (placed.length) {
      const bounds = L.latLngBounds(placed.map((s) => [s.lat as number, s.lon as number]));
      this.map.fitBounds(bounds.pad(0.3), { maxZoom: 10 });
    } else {
      this.map.setView([0, 0], 2);
    }
    this.drawGrid();
    return sites.length - placed.length;
  }

  health(site: string, h: Health): void {
    this.markers.get(site)?.setStyle({ fillColor: COLORS[h] });
  }

  select(site: string | null): void {
    if (this.selected) this.markers.get(this.selected)?.setStyle({ color: "#fff", weight: 2 });
    this.selected = site;
    const m = site ? this.markers.get(site) : undefined;
    if (m) {
      m.setStyle({ color: "#0969da", weight: 4 });
      m.bringToFront();
    }
  }

  invalidate(): void {
    this.map.invalidateSize();
  }

  /** Latitude/longitude lines around the view, at a step that fits its span. */
  private drawGrid(): void {
    this.grid.clearLayers();
    const b = this.map.getBounds();
    const span = Math.max(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
    const step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30].find((s) => span / s <= 12) ?? 30;
    const pad = span;
    const south = Math.max(-85, Math.floor((b.getSouth() - pad) / step) * step);
    const north = Math.min(85, Math.ceil((b.getNorth() + pad) / step) * step);
    const west = Math.floor((b.getWest() - pad) / step) * step;
    const east = Math.ceil((b.getEast() + pad) / step) * step;
    const style = { color: "#9fb3c8", weight: 1, opacity: 0.6, interactive: false };
    for (let lat = south; lat <= north + 1e-9; lat += step) {
      L.polyline(
        [
          [lat, west],
          [lat, east],
        ],
        style,
      ).addTo(this.grid);
    }
    for (let lon = west; lon <= east + 1e-9; lon += step) {
      L.polyline(
        [
          [south, lon],
          [north, lon],
        ],
        style,
      ).addTo(this.grid);
    }
  }
}

export function cssId(id: string): string {
  return id.replace(/[^A-Za-z0-9_-]/g, "_");
}
