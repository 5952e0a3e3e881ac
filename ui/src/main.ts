// The streamgauge dashboard: sign in, pick a project, watch its stations live.
//
// Latest values: the log's head first, then every series' newest value from the latest-values
// endpoint (GET .../latest: from the server's memory, however old the value), then the live
// stream from that head, which resumes with the last cursor after any drop (a value committed
// between the head and the latest read comes twice; the table keeps the newest by time). Units
// come from the latest read's "units" map (and history reads for series first seen live),
// charts from history reads plus the live values of the series shown.

import "./style.css";
import {
  Api,
  ApiError,
  type Alert,
  type Channel,
  type Credentials,
  type Device,
  type FeedSession,
  type FeedToken,
  type History,
  type Latest,
  type Observation,
  type Project,
  type Site,
  type Variable,
} from "./api";
import { SeriesChart } from "./chart";
import { StationMap, cssId, type Health } from "./map";
import { LiveStream, type StreamState } from "./stream";

const FRESH_MS = 15 * 60_000; // a station with a value this recent is "fresh" on the map
const POLL_MS = 5000; // channels, alerts, feed tokens and sessions
const NO_SITE = ""; // the "station" of devices without a site
const STORE = "streamgauge.dashboard";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

function text(tag: string, value: string, cls?: string): HTMLElement {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

function row(cells: (string | HTMLElement)[]): HTMLTableRowElement {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (typeof c === "string") td.textContent = c;
    else td.append(c);
    tr.append(td);
  }
  return tr;
}

function fill(table: string, rows: HTMLTableRowElement[], empty: string): void {
  const body = $(table).querySelector("tbody") as HTMLTableSectionElement;
  body.replaceChildren(...(rows.length ? rows : [row([text("span", empty, "note")])]));
  if (!rows.length) (body.firstElementChild?.firstElementChild as HTMLTableCellElement).colSpan = 8;
}

function formatValue(v: number | string | null): string {
  if (v === null) return "null";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toFixed(4));
  return v;
}

/** An alert's condition as text: "air_temp < 0", the expression, or "no data for 600 s". */
function describe(c: Alert["condition"]): string {
  if (c.expression) return c.expression;
  if (c.seconds !== undefined) return `no data for ${c.seconds} s`;
  if (c.operator) return `${c.key?.split(".").pop() ?? "?"} ${c.operator} ${c.val}`;
  return JSON.stringify(c);
}

function shortTime(iso: string): string {
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function root(): URL {
  // The page is /ui/ under the server's root (or a proxy's prefix).
  return new URL("../", new URL(".", window.location.href));
}

// -- sign-in --------------------------------------------------------------------------------

function fragment(): { creds: Credentials | null; project: string | null } {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = params.get("token");
  const keyId = params.get("key_id");
  const secret = params.get("secret");
  const creds: Credentials | null = token
    ? { token }
    : keyId && secret
      ? { keyId, secret }
      : null;
  return { creds, project: params.get("project") };
}

function saved(): Credentials | null {
  try {
    const raw = sessionStorage.getItem(STORE);
    return raw ? (JSON.parse(raw) as Credentials) : null;
  } catch {
    return null;
  }
}

async function signIn(creds: Credentials): Promise<Project[]> {
  const api = new Api(root(), creds);
  return api.all<Project>("/api/v1/projects", "projects");
}

function refusal(e: unknown): string {
  if (e instanceof ApiError && e.status === 401)
    return `Sign-in refused: ${e.message}. Check the token, or the key id and secret.`;
  if (e instanceof ApiError) return `Sign-in failed (${e.status}): ${e.message}`;
  return `Sign-in failed: the server did not answer (${e instanceof Error ? e.message : e})`;
}

function showSignIn(message?: string): void {
  $("dashboard").hidden = true;
  $("signin").hidden = false;
  $("project-pick").hidden = true;
  $("signout").hidden = true;
  $("live").hidden = true;
  $("who").textContent = "";
  const err = $("signin-error");
  err.hidden = !message;
  err.textContent = message ?? "";
}

// -- the dashboard of one project -------------------------------------------------------------

interface Cell {
  site: string;
  device: string;
  variable: string;
  tr: HTMLTableRowElement;
  value: HTMLElement;
  unit: HTMLElement;
  qc: HTMLElement;
  time: HTMLElement;
  last: Observation | null;
}

class ProjectView {
  private sites = new Map<string, Site>();
  private devices = new Map<string, Device>();
  private variables = new Map<string, Variable[]>(); // device -> its variables
  private cells = new Map<string, Cell>(); // "device\u0000variable" -> its row
  private units = new Map<string, string>(); // variable id -> unit label
  private unitAsked = new Set<string>();
  private stream: LiveStream | null = null;
  private timers: number[] = [];
  private series: { device: string; variable: string } | null = null;
  private since = 0; // chart: epoch seconds of the oldest point kept
  private healthDue = false;
  private closed = false;

  constructor(
    private readonly api: Api,
    readonly project: string,
    private readonly map: StationMap,
    private readonly chart: SeriesChart,
  ) {}

  async open(): Promise<void> {
    const p = `/api/v1/projects/${encodeURIComponent(this.project)}`;
    const [sites, devices, head] = await Promise.all([
      this.api.all<Site>(`${p}/sites`, "sites"),
      this.api.all<Device>(`${p}/devices`, "devices"),
      fetch(this.api.url("/healthz")).then((r) => r.json() as Promise<{ head: number }>),
    ]);
    const lists = await Promise.all(
      devices.map((d) =>
        this.api.all<Variable>(`${p}/devices/${encodeURIComponent(d.id)}/variables`, "variables"),
      ),
    );
    if (this.closed) return;
    for (const s of sites) this.sites.set(s.id, s);
    devices.forEach((d, i) => {
      this.devices.set(d.id, d);
      this.variables.set(d.id, lists[i]);
    });
    this.buildTable();
    const unplaced = this.map.show(sites);
    const note = $("map-note");
    note.hidden = !unplaced && sites.length > 0;
    note.textContent = sites.length
      ? `${unplaced} station(s) without coordinates are listed in the table only.`
      : "This project has no stations (sites) yet.";
    for (const s of sites) this.map.health(s.id, "none");
    await this.loadLatest(p);
    if (this.closed) return;
    this.stream = new LiveStream(this.api, this.project, head.head, {
      observations: (batch) => this.observed(batch),
      state: (s, detail) => liveState(s, detail),
      fatal: (e) => this.error(`The live stream stopped: ${e.message}`),
    });
    this.stream.start();
    void this.pollAlerts();
    void this.pollFeeds();
    this.timers.push(
      window.setInterval(() => void this.pollAlerts(), POLL_MS),
      window.setInterval(() => void this.pollFeeds(), POLL_MS),
      window.setInterval(() => this.refreshHealth(), 30_000),
    );
    const first = sites.find((s) => s.lat !== null) ?? sites[0];
    if (first) this.selectStation(first.id);
    else if (devices.length) this.selectStation(NO_SITE);
  }

  close(): void {
    this.closed = true;
    this.stream?.stop();
    for (const t of this.timers) clearInterval(t);
    this.chart.clear();
  }

  error(message: string): void {
    const el = $("dash-error");
    el.hidden = false;
    el.textContent = message;
  }

  // -- the table ----------------------------------------------------------------------------

  private siteName(site: string): string {
    if (site === NO_SITE) return "(no site)";
    return this.sites.get(site)?.name || site;
  }

  private buildTable(): void {
    const rows: HTMLTableRowElement[] = [];
    const devices = [...this.devices.values()].sort(
      (a, b) =>
        (a.site ?? "").localeCompare(b.site ?? "") || a.id.localeCompare(b.id),
    );
    for (const d of devices) {
      const site = d.site ?? NO_SITE;
      for (const v of (this.variables.get(d.id) ?? []).sort((a, b) => a.id.localeCompare(b.id))) {
        const value = text("span", "—", "value");
        const unit = text("span", "");
        const qc = text("span", "", "qc");
        const time = text("span", "no data yet", "note");
        const tr = row([this.siteName(site), d.id, v.id, value, unit, qc, time]);
        tr.dataset.site = site;
        tr.dataset.device = d.id;
        tr.dataset.variable = v.id;
        tr.className = `station-${cssId(site)}`;
        tr.addEventListener("click", () => {
          this.selectStation(site);
          this.pickSeries(d.id, v.id);
        });
        rows.push(tr);
        this.cells.set(`${d.id}\u0000${v.id}`, {
          site,
          device: d.id,
          variable: v.id,
          tr,
          value,
          unit,
          qc,
          time,
          last: null,
        });
      }
    }
    fill("latest", rows, "No devices with variables in this project.");
  }

  /** Every series' newest value (``GET .../latest``), in the units the stream and the history
   * reads use (the server's default: none is asked for) and with QC-flagged values kept
   * (``qc=none``, as the stream). Read after the log's head, so the stream from that head
   * misses nothing committed since. */
  private async loadLatest(p: string): Promise<void> {
    let latest: Latest;
    try {
      latest = await this.api.get<Latest>(`${p}/latest`, { qc: "none" });
    } catch (e) {
      this.error(`Latest values could not be read: ${e instanceof Error ? e.message : e}`);
      return;
    }
    if (this.closed) return;
    for (const [v, u] of Object.entries(latest.units)) this.units.set(v, u);
    this.observed(latest.latest);
  }

  private observed(batch: Observation[]): void {
    const now = Date.now() / 1000;
    for (const o of batch) {
      const cell = this.cells.get(`${o.device}\u0000${o.variable}`);
      if (cell && (!cell.last || o.time >= cell.last.time)) {
        cell.last = o;
        cell.value.textContent = formatValue(o.value);
        cell.qc.textContent = o.qc.length ? o.qc.join(", ") : "ok";
        cell.qc.className = o.qc.length ? "qc bad" : "qc ok";
        cell.time.textContent = shortTime(o.time);
        cell.time.className = "time";
        cell.tr.dataset.cursor = String(o.cursor);
        this.unitOf(o);
        this.healthDue = true;
      }
      if (this.series && o.device === this.series.device && o.variable === this.series.variable) {
        const y = typeof o.value === "number" ? o.value : null;
        this.chart.add(`${o.device}\u0000${o.variable}`, Date.parse(o.time) / 1000, y, Math.min(this.since, now));
      }
    }
    if (this.healthDue) {
      this.healthDue = false;
      this.refreshHealth();
    }
  }

  /** Ask for the unit label of ``o``'s variable once (a one-row history read names it). */
  private unitOf(o: Observation): void {
    const known = this.units.get(o.variable);
    const cell = this.cells.get(`${o.device}\u0000${o.variable}`);
    if (known !== undefined) {
      if (cell) cell.unit.textContent = known;
      return;
    }
    if (this.unitAsked.has(o.variable)) return;
    this.unitAsked.add(o.variable);
    this.api
      .get<History>(`/api/v1/projects/${encodeURIComponent(this.project)}/observations`, {
        device: o.device,
        variable: o.variable,
        start: o.time,
        limit: 1,
        qc: "none",
      })
      .then((h) => {
        for (const [v, u] of Object.entries(h.units)) this.units.set(v, u);
        for (const c of this.cells.values()) {
          const u = this.units.get(c.variable);
          if (u !== undefined) c.unit.textContent = u;
        }
      })
      .catch(() => this.unitAsked.delete(o.variable));
  }

  private refreshHealth(): void {
    const now = Date.now();
    const by = new Map<string, Health>();
    for (const c of this.cells.values()) {
      if (!c.last) continue;
      const h: Health = c.last.qc.length
        ? "qc"
        : now - Date.parse(c.last.time) < FRESH_MS
          ? "fresh"
          : "stale";
      const was = by.get(c.site);
      if (was !== "qc" && !(was === "fresh" && h === "stale")) by.set(c.site, h);
    }
    for (const [site, h] of by) this.map.health(site, h);
  }

  // -- the station panel --------------------------------------------------------------------

  selectStation(site: string): void {
    this.map.select(site === NO_SITE ? null : site);
    for (const c of this.cells.values()) c.tr.classList.toggle("selected", c.site === site);
    const s = this.sites.get(site);
    const where =
      s && s.lat !== null && s.lon !== null ? ` (${s.lat.toFixed(3)}, ${s.lon.toFixed(3)})` : "";
    $("station-title").textContent = `Station ${this.siteName(site)}${where}`;
    const pick = $<HTMLSelectElement>("series");
    const options: HTMLOptionElement[] = [];
    for (const c of this.cells.values()) {
      if (c.site !== site) continue;
      const o = document.createElement("option");
      o.value = `${c.device}\u0000${c.variable}`;
      o.textContent = `${c.device} / ${c.variable}`;
      options.push(o);
    }
    pick.replaceChildren(...options);
    $("chart-controls").hidden = !options.length;
    if (options.length) {
      const [device, variable] = options[0].value.split("\u0000");
      this.pickSeries(device, variable);
    } else {
      this.chart.clear();
      $("chart-note").textContent = "This station has no variables.";
    }
  }

  async pickSeries(device: string, variable: string): Promise<void> {
    const key = `${device}\u0000${variable}`;
    $<HTMLSelectElement>("series").value = key;
    this.series = { device, variable };
    const range = Number($<HTMLSelectElement>("range").value);
    const start = Date.now() / 1000 - range;
    this.since = start;
    const p = `/api/v1/projects/${encodeURIComponent(this.project)}`;
    $<HTMLAnchorElement>("plot-link").href = this.api
      .url(`${p}/plot.png`, { device, variable, start: new Date(start * 1000).toISOString() })
      .toString();
    $("chart-note").textContent = "Loading history…";
    const points: [number, number | null][] = [];
    let unit = this.units.get(variable) ?? "";
    try {
      let page: string | undefined;
      for (let i = 0; i < 20; i++) {
        const h = await this.api.get<History>(`${p}/observations`, {
          device,
          variable,
          start: new Date(start * 1000).toISOString(),
          limit: 5000,
          qc: "none",
          page,
        });
        for (const o of h.observations)
          points.push([Date.parse(o.time) / 1000, typeof o.value === "number" ? o.value : null]);
        unit = h.units[variable] ?? unit;
        if (!h.next) break;
        page = h.next;
      }
    } catch (e) {
      $("chart-note").textContent = `History could not be read: ${e instanceof Error ? e.message : e}`;
      return;
    }
    if (this.closed || this.series?.device !== device || this.series?.variable !== variable) return;
    if (unit) this.units.set(variable, unit);
    this.chart.reset(key, unit ? `${variable} (${unit})` : variable, points);
    $("chart-note").textContent = points.length
      ? `${points.length} stored value(s) since ${new Date(start * 1000).toLocaleString()}, then live.`
      : "No stored values in this range yet; new values appear live.";
  }

  // -- alerts and feeds ---------------------------------------------------------------------

  private async pollAlerts(): Promise<void> {
    const p = `/api/v1/projects/${encodeURIComponent(this.project)}`;
    try {
      const { channels } = await this.api.get<{ channels: Channel[] }>(`${p}/channels`);
      if (this.closed) return;
      fill(
        "channels",
        channels.map((c) =>
          row([
            c.name || c.id,
            c.status,
            c.triggers
              .map((t, i) => `${t.type} on ${t.device}${t.variable ? "/" + t.variable : ""}: ${c.states[i] ?? "?"}`)
              .join("; "),
          ]),
        ),
        "No alert channels.",
      );
      const lists = await Promise.all(
        channels.map((c) =>
          this.api.get<{ alerts: Alert[] }>(`${p}/channels/${encodeURIComponent(c.id)}/alerts`, {
            limit: 10,
          }),
        ),
      );
      if (this.closed) return;
      const alerts = lists
        .flatMap((l) => l.alerts)
        .sort((a, b) => b.created_at.localeCompare(a.created_at))
        .slice(0, 20);
      fill(
        "alerts",
        alerts.map((a) =>
          row([
            shortTime(a.created_at),
            a.channel_name || a.channel_id,
            a.inst_id + (a.var_id ? `/${a.var_id}` : ""),
            describe(a.condition),
            a.value === null ? "" : formatValue(a.value),
          ]),
        ),
        "No alerts yet.",
      );
    } catch (e) {
      fill("channels", [], `Channels could not be read: ${e instanceof Error ? e.message : e}`);
    }
  }

  private async pollFeeds(): Promise<void> {
    const p = `/api/v1/projects/${encodeURIComponent(this.project)}`;
    const note = $("feed-note");
    try {
      const [tokens, sessions] = await Promise.all([
        this.api.all<FeedToken>(`${p}/feedtokens`, "feedtokens"),
        this.api.all<FeedSession>(`${p}/feedsessions`, "sessions"),
      ]);
      if (this.closed) return;
      note.hidden = true;
      fill(
        "feedtokens",
        tokens.map((t) => row([t.name, t.id, shortTime(t.created_at)])),
        "No feed tokens.",
      );
      fill(
        "sessions",
        sessions.map((s) => row([s.id, s.token_name || s.token, s.args || "(none)", String(s.position)])),
        "No connected sessions.",
      );
    } catch (e) {
      note.hidden = false;
      note.textContent =
        e instanceof ApiError && e.status === 403
          ? "Feed tokens and sessions need the manager or admin role on this project."
          : `Feed tokens could not be read: ${e instanceof Error ? e.message : e}`;
      fill("feedtokens", [], "—");
      fill("sessions", [], "—");
    }
  }
}

// -- wiring ---------------------------------------------------------------------------------

function liveState(s: StreamState, detail?: string): void {
  const el = $("live");
  el.hidden = false;
  el.className = `live ${s === "live" ? "on" : "off"}`;
  el.textContent = { connecting: "connecting", live: "live", reconnecting: "reconnecting", stopped: "stopped" }[s];
  el.title = detail ?? "live stream";
  el.dataset.state = s;
}

class App {
  private api: Api | null = null;
  private view: ProjectView | null = null;
  private map: StationMap | null = null;
  private chart = new SeriesChart($("chart"));

  async start(): Promise<void> {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $<HTMLInputElement>("token").value.trim();
      const keyId = $<HTMLInputElement>("key-id").value.trim();
      const secret = $<HTMLInputElement>("key-secret").value;
      if (!token && !(keyId && secret)) {
        showSignIn("Enter a token, or a key id and its secret.");
        return;
      }
      void this.enter(token ? { token } : { keyId, secret }, null);
    });
    $("signout").addEventListener("click", () => this.signOut());
    $("project").addEventListener("change", () =>
      void this.openProject($<HTMLSelectElement>("project").value),
    );
    $("series").addEventListener("change", () => {
      const [d, v] = $<HTMLSelectElement>("series").value.split("\u0000");
      void this.view?.pickSeries(d, v);
    });
    $("range").addEventListener("change", () => {
      const [d, v] = $<HTMLSelectElement>("series").value.split("\u0000");
      if (d && v) void this.view?.pickSeries(d, v);
    });
    window.addEventListener("hashchange", () => void this.fromFragment());
    if (!(await this.fromFragment())) {
      const creds = saved();
      if (creds) await this.enter(creds, null);
      else showSignIn();
    }
  }

  /** ``#token=...&project=...`` (or ``#key_id=...&secret=...``): sign in from a link. */
  private async fromFragment(): Promise<boolean> {
    const { creds, project } = fragment();
    if (!creds && !project) return false;
    // Drop the secret from the address bar (and the history); keep the project.
    history.replaceState(null, "", project ? `#project=${encodeURIComponent(project)}` : location.pathname + location.search);
    const use = creds ?? saved();
    if (!use) {
      showSignIn();
      return true;
    }
    await this.enter(use, project);
    return true;
  }

  private async enter(creds: Credentials, project: string | null): Promise<void> {
    $<HTMLButtonElement>("signin-button").disabled = true;
    let projects: Project[];
    try {
      projects = await signIn(creds);
    } catch (e) {
      sessionStorage.removeItem(STORE);
      showSignIn(refusal(e));
      return;
    } finally {
      $<HTMLButtonElement>("signin-button").disabled = false;
    }
    sessionStorage.setItem(STORE, JSON.stringify(creds));
    this.api = new Api(root(), creds);
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("signout").hidden = false;
    $("who").textContent = "token" in creds ? "signed in with a token" : `key ${creds.keyId}`;
    const pick = $<HTMLSelectElement>("project");
    pick.replaceChildren(
      ...projects.map((p) => {
        const o = document.createElement("option");
        o.value = p.id;
        o.textContent = p.name && p.name !== p.id ? `${p.name} (${p.id})` : p.id;
        return o;
      }),
    );
    $("project-pick").hidden = false;
    this.map ??= new StationMap($("map"), (site) => this.view?.selectStation(site));
    this.map.invalidate();
    if (!projects.length) {
      this.error("These credentials see no project yet.");
      return;
    }
    const wanted = project ?? new URLSearchParams(location.hash.slice(1)).get("project");
    const chosen = projects.find((p) => p.id === wanted)?.id ?? projects[0].id;
    if (wanted && chosen !== wanted) this.error(`No project ${JSON.stringify(wanted)} for these credentials.`);
    pick.value = chosen;
    await this.openProject(chosen);
  }

  private error(message: string): void {
    const el = $("dash-error");
    el.hidden = false;
    el.textContent = message;
  }

  private async openProject(project: string): Promise<void> {
    this.view?.close();
    $("dash-error").hidden = true;
    if (!this.api || !this.map) return;
    history.replaceState(null, "", `#project=${encodeURIComponent(project)}`);
    this.view = new ProjectView(this.api, project, this.map, this.chart);
    document.body.dataset.project = project;
    try {
      await this.view.open();
      document.body.dataset.ready = project;
    } catch (e) {
      this.error(`Project ${project} could not be opened: ${e instanceof Error ? e.message : e}`);
    }
  }

  private signOut(): void {
    this.view?.close();
    this.view = null;
    this.api = null;
    sessionStorage.removeItem(STORE);
    history.replaceState(null, "", location.pathname + location.search);
    delete document.body.dataset.ready;
    showSignIn();
  }
}

void new App().start();
