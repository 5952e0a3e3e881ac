// The native API (/api/v1) as the dashboard calls it: credentials, JSON, and the error envelope
// ({"error": {status, code, message, details}}) turned into ApiError with a readable message.

export type Credentials = { token: string } | { keyId: string; secret: string };

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export function authorization(c: Credentials): string {
  if ("token" in c) return `Bearer ${c.token}`;
  const raw = new TextEncoder().encode(`${c.keyId}:${c.secret}`);
  let bin = "";
  raw.forEach((b) => (bin += String.fromCharCode(b)));
  return `Basic ${btoa(bin)}`;
}

/** The error envelope's message and where it points ("field: reason"), or the status text. */
export async function errorOf(r: Response): Promise<ApiError> {
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    const err = body?.error;
    if (err && typeof err.message === "string") {
      const where = (err.details ?? [])
        .map((d: { field?: string; reason?: string }) =>
          [d.field, d.reason].filter(Boolean).join(": "),
        )
        .filter(Boolean)
        .join("; ");
      message = where ? `${err.message} (${where})` : err.message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(r.status, message);
}

export class Api {
  /** ``root``: the server's root URL (the page lives at ``root/ui/``). */
  constructor(
    readonly root: URL,
    readonly credentials: Credentials,
  ) {}

  url(path: string, params?: Record<string, string | number | string[] | undefined>): URL {
    const u = new URL(path.replace(/^\//, ""), this.root);
    for (const [k, v] of Object.entries(params ?? {})) {
      if (v === undefined) continue;
      for (const one of Array.isArray(v) ? v : [v]) u.searchParams.append(k, String(one));
    }
    return u;
  }

  headers(extra?: Record<string, string>): Record<string, string> {
    return { Authorization: authorization(this.credentials), ...extra };
  }

  async get<T>(
    path: string,
    params?: Record<string, string | number | string[] | undefined>,
    signal?: AbortSignal,
  ): Promise<T> {
    const r = await fetch(this.url(path, params), { headers: this.headers(), signal });
    if (!r.ok) throw await errorOf(r);
    return (await r.json()) as T;
  }

  /** Every item of a paged list (``{name: [...], next}``), following ``next``. */
  async all<T>(path: string, name: string, signal?: AbortSignal): Promise<T[]> {
    const out: T[] = [];
    let page: string | undefined;
    for (;;) {
      const body = await this.get<Record<string, unknown>>(
        path,
        { limit: 1000, page },
        signal,
      );
      out.push(...((body[name] as T[]) ?? []));
      const next = body.next as string | null | undefined;
      if (!next) return out;
      page = next;
    }
  }
}

// -- the documents the dashboard reads --------------------------------------------------------

export interface Project {
  id: string;
  name: string;
}
export interface Site {
  id: string;
  name: string;
  lat: number | null;
  lon: number | null;
  elevation: number | null;
  state: string | null;
  network: string | null;
}
export interface Device {
  id: string;
  site: string | null;
  type: string | null;
  name: string;
}
export interface Variable {
  id: string;
  name: string;
  set: number;
  device: string;
}
export interface Observation {
  cursor: number;
  device: string;
  variable: string;
  set: number;
  time: string;
  value: number | string | null;
  qc: string[];
}
export interface History {
  observations: Observation[];
  units: Record<string, string>;
  next: string | null;
}
export interface Latest {
  latest: Observation[];
  units: Record<string, string>;
}
export interface Channel {
  id: string;
  name: string;
  status: string;
  states: string[];
  triggers: { type: string; device: string; variable?: string | null }[];
}
export interface Alert {
  alert_id: number;
  channel_id: string;
  channel_name: string;
  inst_id: string;
  var_id: string | null;
  value: number | null;
  time: string;
  condition: { key?: string; operator?: string; val?: number; expression?: string; seconds?: number };
  created_at: string;
}
export interface FeedToken {
  id: string;
  name: string;
  created_at: string;
}
export interface FeedSession {
  id: string;
  token: string;
  token_name: string;
  args: string;
  position: number;
}
