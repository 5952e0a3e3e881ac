// The live chart of one series with uPlot (canvas): its history, then every new value.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export class SeriesChart {
  private plot: uPlot | null = null;
  private xs: number[] = [];
  private ys: (number | null)[] = [];
  private key: string | null = null;

  constructor(private readonly el: HTMLElement) {
    window.addEventListener("resize", () => this.resize());
  }

  /** Start a new series: ``key`` identifies it, ``points`` are (epoch seconds, value). */
  reset(key: string, label: string, points: [number, number | null][]): void {
    this.key = key;
    this.xs = points.map((p) => p[0]);
    this.ys = points.map((p) => p[1]);
    this.plot?.destroy();
    this.plot = new uPlot(
      {
        width: this.width(),
        height: 260,
        scales: { x: { time: true } },
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
        series: [
          {},
          { label, stroke: "#0969da", width: 2, spanGaps: true, points: { show: this.xs.length < 200 } },
        ],
        axes: [{}, { size: 60 }],
      },
      [this.xs, this.ys],
      this.el,
    );
    this.el.dataset.points = String(this.xs.length);
  }

  /** Add a live value of ``key`` (ignored if another series is shown). */
  add(key: string, x: number, y: number | null, since: number): void {
    if (key !== this.key || !this.plot) return;
    const last = this.xs.length ? this.xs[this.xs.length - 1] : -Infinity;
    if (x > last) {
      this.xs.push(x);
      this.ys.push(y);
    } else {
      const i = this.xs.findIndex((t) => t >= x);
      if (this.xs[i] === x) this.ys[i] = y;
      else {
        this.xs.splice(i, 0, x);
        this.ys.splice(i, 0, y);
      }
    }
    let drop = 0;
    while (drop < this.xs.length - 1 && this.xs[drop] < since) drop += 1;
    if (drop) {
      this.xs.splice(0, drop);
      this.ys.splice(0, drop);
    }
    this.plot.setData([this.xs, this.ys]);
    this.el.dataset.points = String(this.xs.length);
  }

  clear(): void {
    this.plot?.destroy();
    this.plot = null;
    this.key = null;
    this.el.dataset.points = "0";
  }

  private width(): number {
    return Math.max(300, this.el.clientWidth || 600);
  }

  private resize(): void {
    this.plot?.setSize({ width: this.width(), height: 260 });
  }
}
