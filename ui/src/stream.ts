// The live stream of a project (GET /api/v1/projects/{p}/stream, NDJSON over fetch), resumed
// with the last cursor seen whenever it drops: a network error, a silent connection, or the
// server's closing frame ({"closed": {"reason", "resume"}}). Nothing is lost or repeated: a
// resume asks for every observation after the last one delivered.

import { Api, ApiError, errorOf, type Observation } from "./api";

/** Splits a text stream into lines, fed chunks split anywhere (pure; no I/O). */
export class LineSplitter {
  private rest = "";
  constructor(private readonly maxLine = 1 << 20) {}

  feed(chunk: string): string[] {
    const parts = (this.rest + chunk).split("\n");
    this.rest = parts.pop() ?? "";
    if (this.rest.length > this.maxLine) throw new Error("stream line too long");
    return parts.map((l) => l.replace(/\r$/, "")).filter((l) => l.trim() !== "");
  }
}

/** Reconnect delays: 0.25 s doubling to a cap of 4 s (the first retry is quick). */
export function* backoff(): Generator<number, never, void> {
  let delay = 250;
  for (;;) {
    yield delay;
    delay = Math.min(delay * 2, 4000);
  }
}

export type StreamState = "connecting" | "live" | "reconnecting" | "stopped";

export interface StreamHandlers {
  observations(batch: Observation[]): void;
  state(state: StreamState, detail?: string): void;
  fatal(error: ApiError): void;
}

const SILENCE_MS = 60_000; // no byte (not even a keepalive) for this long: reconnect

export class LiveStream {
  cursor: number | null;
  reconnects = 0;
  private abort: AbortController | null = null;
  private stopped = false;

  constructor(
    private readonly api: Api,
    private readonly project: string,
    since: number | null,
    private readonly handlers: StreamHandlers,
  ) {
    this.cursor = since;
  }

  start(): void {
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    this.handlers.state("stopped");
  }

  private async run(): Promise<void> {
    const delays = backoff();
    while (!this.stopped) {
      const outcome = await this.once();
      if (this.stopped) return;
      if (outcome === "fatal") return;
      if (outcome === "closed") {
        this.reconnects += 1;
        continue; // the server ended the stream and told us where to resume: at once
      }
      this.handlers.state("reconnecting", outcome);
      this.reconnects += 1;
      await new Promise((ok) => setTimeout(ok, delays.next().value));
    }
  }

  /** One connection: "closed" (the server's closing frame), "fatal", or why it dropped. */
  private async once(): Promise<string> {
    const abort = new AbortController();
    this.abort = abort;
    let silence = 0;
    const watchdog = () => {
      clearTimeout(silence);
      silence = window.setTimeout(() => abort.abort(), SILENCE_MS);
    };
    this.handlers.state(this.reconnects ? "reconnecting" : "connecting");
    try {
      const url = this.api.url(`/api/v1/projects/${encodeURIComponent(this.project)}/stream`, {
        since: this.cursor ?? undefined,
        qc: "none",
      });
      watchdog();
      const r = await fetch(url, {
        headers: this.api.headers({ Accept: "application/x-ndjson" }),
        signal: abort.signal,
        cache: "no-store",
      });
      if (!r.ok || r.body === null) {
        const err = await errorOf(r);
        if (r.status >= 400 && r.status < 500 && r.status !== 429 && r.status !== 408) {
          this.handlers.fatal(err);
          return "fatal";
        }
        return err.message;
      }
      this.handlers.state("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      const lines = new LineSplitter();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return "the stream ended";
        watchdog();
        const batch: Observation[] = [];
        for (const line of lines.feed(value)) {
          const msg = JSON.parse(line);
          if (typeof msg.cursor === "number") {
            batch.push(msg as Observation);
            this.cursor = msg.cursor;
          } else if (msg.closed) {
            this.cursor = msg.closed.resume;
            if (batch.length) this.handlers.observations(batch);
            await reader.cancel().catch(() => undefined);
            return "closed";
          }
          // {"units": ...} and {"keepalive": ...}: nothing to do (the watchdog saw bytes)
        }
        if (batch.length) this.handlers.observations(batch);
      }
    } catch (e) {
      return e instanceof Error ? e.message : String(e);
    } finally {
      clearTimeout(silence);
      abort.abort();
    }
  }
}
