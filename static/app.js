// The fleet page: reads /api/devices, /api/stats and a device's series, and
// refreshes every 10 s while the tab is visible. Everything from the API is
// written with textContent or setAttribute, never parsed as HTML.

const REFRESH_MS = 10_000;
const TOKEN_KEY = "lakegate.readerToken";
const SVG = "http://www.w3.org/2000/svg";
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const RANGES = { "15m": 15 * MINUTE, "1h": HOUR, "6h": 6 * HOUR, "24h": DAY, "7d": 7 * DAY };
const BUCKETS = { "1m": MINUTE, "5m": 5 * MINUTE, "1h": HOUR, "1d": DAY };

const $ = (id) => document.getElementById(id);

// ---- the reader token: #token=... -> sessionStorage -> Authorization ----

function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    try {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
    } catch {
      // Storage disabled: the token lives for this page only.
    }
    history.replaceState(null, "", location.pathname + location.search);
    return fromUrl;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

const token = takeToken();

class ApiFailure extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
  } catch {
    throw new ApiFailure("the gateway does not answer");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy page, say): reported by status below.
  }
  if (!response.ok) {
    if (response.status === 401) {
      throw new ApiFailure(
        token
          ? "the reader token was refused; open the page with a valid #token=… address"
          : "sign-in needed: open the page with the #token=… address that `cargo run` prints",
      );
    }
    const detail = body && body.message ? body.message : response.statusText;
    throw new ApiFailure(`${response.status} ${detail}`);
  }
  if (body === null) throw new ApiFailure("the gateway answered something other than JSON");
  return body;
}

// ---- state ----

const state = {
  devices: [],
  truncated: false,
  /** Server clock minus ours, so that "last seen" does not depend on this device's clock. */
  clockOffset: 0,
  device: null,
  metric: null,
  /** The metric chosen in the select, kept across devices that have it. */
  chosenMetric: null,
  /** device id -> its default metric, worked out once from its latest readings. */
  defaultMetrics: new Map(),
  range: "1h",
  series: null,
  lastSuccess: null,
  lastAttempt: 0,
  error: null,
  seriesError: null,
  inFlight: false,
  seriesRequest: 0,
};

const now = () => Date.now() + state.clockOffset;

// ---- formatting ----

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

function formatNumber(value, digits = 2) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "–";
  return new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(Number(value));
}

function formatAgo(ms) {
  const secs = Math.max(0, Math.round(ms / 1000));
  if (secs < 60) return `${secs} s ago`;
  const mins = Math.round(secs / 60);
  if (mins < 90) return `${mins} min ago`;
  const hours = Math.round(mins / 60);
  if (hours < 36) return `${hours} h ago`;
  return `${Math.round(hours / 24)} d ago`;
}

function formatDuration(secs) {
  const s = Math.floor(Number(secs) || 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function deviceState(lastSeen) {
  const age = now() - Date.parse(lastSeen);
  if (!Number.isFinite(age)) return "silent";
  if (age <= 5 * MINUTE) return "reporting";
  if (age <= HOUR) return "quiet";
  return "silent";
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// ---- the status line ----

function renderStatus() {
  const line = $("status-line");
  const errors = [state.error, state.seriesError].filter(Boolean);
  let message;
  let kind;
  if (errors.length) {
    kind = "error";
    message = `Error: ${errors.join("; ")}`;
  } else if (state.lastSuccess) {
    kind = "ok";
    message = document.hidden ? "Paused while the tab is hidden" : "Up to date";
  } else {
    kind = "loading";
    message = "Loading…";
  }
  // Only the message is a live region: it changes on outcomes, not every second.
  const live = $("status");
  if (live.textContent !== message) live.textContent = message;
  $("status-age").textContent = state.lastSuccess
    ? `updated ${formatAgo(Date.now() - state.lastSuccess)}`
    : "";
  line.dataset.state = kind;
}

// ---- gateway stats ----

function renderStats(stats) {
  const set = (name, text) => {
    const node = document.querySelector(`[data-stat="${name}"]`);
    if (node) node.textContent = text;
  };
  set("readings_per_sec_1m", formatNumber(stats.readings_per_sec_1m, 1));
  set("readings_accepted_total", formatNumber(stats.readings_accepted_total, 0));
  set("rejected_total", formatNumber(stats.rejected_total, 0));
  set("queue_rows", formatNumber(stats.queue_rows, 0));
  set(
    "batch_latency",
    `${formatNumber(stats.batch_latency_ms_avg, 0)} / ${formatNumber(stats.batch_latency_ms_last, 0)}`,
  );
  set("batches", `${formatNumber(stats.batches_committed, 0)} / ${formatNumber(stats.batch_failures, 0)}`);
  set("devices_in_registry", formatNumber(stats.devices_in_registry, 0));
  set("uptime_secs", formatDuration(stats.uptime_secs));

  const list = $("reasons");
  const reasons = Object.entries(stats.rejected_by_reason || {})
    .filter(([, count]) => Number(count) > 0)
    .sort((a, b) => Number(b[1]) - Number(a[1]));
  list.replaceChildren();
  if (reasons.length === 0) {
    list.append(el("li", "none", "muted"));
  }
  for (const [reason, count] of reasons) {
    const item = el("li");
    item.append(el("code", reason), el("span", formatNumber(count, 0), "count"));
    list.append(item);
  }
}

// ---- the device table ----

function renderDevices() {
  const body = $("fleet").tBodies[0];
  // Rebuilding the rows must not take the keyboard focus away.
  const focused = document.activeElement?.closest?.("#fleet tr[data-device]")?.dataset.device;
  body.replaceChildren();
  for (const device of state.devices) {
    const row = document.createElement("tr");
    row.dataset.device = device.device_id;
    const selected = device.device_id === state.device;
    if (selected) row.classList.add("selected");

    const nameCell = document.createElement("th");
    nameCell.scope = "row";
    const button = el("button", device.device_id, "device");
    button.type = "button";
    button.title = device.device_id;
    button.setAttribute("aria-pressed", String(selected));
    button.addEventListener("click", () => selectDevice(device.device_id));
    nameCell.append(button);

    const kind = deviceState(device.last_seen);
    const stateCell = el("td");
    stateCell.append(el("span", kind, `badge ${kind}`));

    const seenCell = el("td");
    const time = el("time", formatAgo(now() - Date.parse(device.last_seen)));
    time.dateTime = device.last_seen;
    time.title = new Date(device.last_seen).toLocaleString();
    seenCell.append(time);

    const metrics = Array.isArray(device.metrics) ? device.metrics : [];
    const metricsCell = el("td", metrics.join(", "), "metrics");
    metricsCell.title = metrics.join(", ");

    row.append(
      nameCell,
      stateCell,
      seenCell,
      el("td", formatNumber(device.readings_last_hour, 0), "num"),
      el("td", formatNumber(device.readings_last_day, 0), "num"),
      metricsCell,
      el("td", formatNumber(device.rejected_since_start, 0), "num"),
    );
    // A click anywhere on the row selects it; the button is the keyboard way.
    row.addEventListener("click", (event) => {
      if (!(event.target instanceof HTMLButtonElement)) selectDevice(device.device_id);
    });
    body.append(row);
  }
  if (focused !== undefined) {
    const row = Array.from(body.rows).find((r) => r.dataset.device === focused);
    row?.querySelector("button")?.focus();
  }
  $("fleet-empty").hidden = state.devices.length > 0;
  $("fleet-truncated").hidden = !state.truncated;
  $("device-count").textContent = state.devices.length ? `(${state.devices.length})` : "";
}

function fillSelect(select, values, selected) {
  const current = Array.from(select.options, (option) => option.value);
  if (current.length !== values.length || current.some((value, i) => value !== values[i])) {
    select.replaceChildren(...values.map((value) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      return option;
    }));
  }
  select.value = selected ?? "";
  select.disabled = values.length === 0;
}

function metricsOf(deviceId) {
  const device = state.devices.find((d) => d.device_id === deviceId);
  return device && Array.isArray(device.metrics) ? device.metrics : [];
}

/** Readings looked at to pick a device's default metric. */
const SAMPLE_READINGS = 200;

/**
 * The metric to chart first: the numeric one in most of the device's latest readings,
 * preferring any that is not 0/1 only (a boolean is a poor first view); the first name
 * when none is numeric.
 */
async function defaultMetric(deviceId) {
  const metrics = metricsOf(deviceId);
  if (state.defaultMetrics.has(deviceId)) {
    const known = state.defaultMetrics.get(deviceId);
    if (metrics.includes(known)) return known;
  }
  let readings = [];
  try {
    const body = await api(`api/devices/${encodeURIComponent(deviceId)}/latest?limit=${SAMPLE_READINGS}`);
    readings = Array.isArray(body.readings) ? body.readings : [];
  } catch {
    // Without a sample the first name will do; the series request reports the failure.
  }
  const counts = new Map();
  for (const reading of readings) {
    for (const [name, value] of Object.entries(reading.metrics || {})) {
      if (typeof value !== "number" || !metrics.includes(name)) continue;
      const count = counts.get(name) ?? { readings: 0, boolean: true };
      count.readings += 1;
      count.boolean &&= value === 0 || value === 1;
      counts.set(name, count);
    }
  }
  const ranked = Array.from(counts)
    .sort(([nameA, a], [nameB, b]) => (a.boolean - b.boolean) || (b.readings - a.readings)
      || nameA.localeCompare(nameB));
  const chosen = ranked[0]?.[0] ?? metrics[0] ?? null;
  if (readings.length) state.defaultMetrics.set(deviceId, chosen);
  return chosen;
}

/** Keeps the selection valid: the first device, and the metric chosen or its default. */
async function reconcileSelection() {
  const ids = state.devices.map((d) => d.device_id);
  if (!ids.includes(state.device)) state.device = ids[0] ?? null;
  const device = state.device;
  const metrics = metricsOf(device);
  if (metrics.includes(state.chosenMetric)) state.metric = state.chosenMetric;
  else if (!metrics.includes(state.metric)) {
    const metric = device === null ? null : await defaultMetric(device);
    if (device !== state.device) return; // another device was picked meanwhile
    state.metric = metric;
  }
  fillSelect($("device-select"), ids, state.device);
  fillSelect($("metric-select"), metrics, state.metric);
}

async function selectDevice(deviceId) {
  if (deviceId === state.device) return;
  state.device = deviceId;
  state.metric = null;
  renderDevices();
  await reconcileSelection();
  if (deviceId === state.device) loadSeries();
}

// ---- the chart ----

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const residual = raw / magnitude;
  const factor = residual >= 7.07 ? 10 : residual >= 3.16 ? 5 : residual >= 1.41 ? 2 : 1;
  return factor * magnitude;
}

/** The value axis: the data's extent with some room, and round ticks inside it. */
function valueTicks(low, high) {
  const pad = low === high ? Math.abs(low) * 0.1 || 1 : (high - low) * 0.08;
  low -= pad;
  high += pad;
  const step = niceStep(high - low, 5);
  const ticks = [];
  for (let v = Math.ceil(low / step) * step; v <= high; v += step) ticks.push(Number(v.toPrecision(12)));
  return { low, high, ticks, step };
}

const TIME_STEPS = [
  MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
  HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 3 * DAY,
];

function timeTicks(from, to, width) {
  const wanted = Math.max(3, Math.min(8, Math.floor(width / 110)));
  const step = TIME_STEPS.find((s) => (to - from) / s <= wanted) ?? 7 * DAY;
  // Align on the local clock: whole minutes, hours or days.
  const start = new Date(from);
  if (step >= DAY) {
    start.setHours(0, 0, 0, 0);
  } else if (step >= HOUR) {
    const hours = step / HOUR;
    start.setMinutes(0, 0, 0);
    start.setHours(Math.floor(start.getHours() / hours) * hours);
  } else {
    const minutes = step / MINUTE;
    start.setSeconds(0, 0);
    start.setMinutes(Math.floor(start.getMinutes() / minutes) * minutes);
  }
  const ticks = [];
  for (let t = start.getTime(); t <= to; t += step) {
    if (t >= from) ticks.push(t);
  }
  const label = step >= DAY
    ? (t) => new Date(t).toLocaleDateString(undefined, { weekday: "short", day: "numeric" })
    : to - from > DAY
      ? (t) => new Date(t).toLocaleString(undefined, { weekday: "short", hour: "2-digit", minute: "2-digit" })
      : (t) => new Date(t).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return { ticks, label };
}

/** The browser's time zone, as the chart's axis and the table name it: "UTC" or "Europe/Paris, UTC+01:00". */
function zoneName(at = Date.now()) {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const offset = -new Date(at).getTimezoneOffset();
  if (offset === 0 && (!zone || /^(Etc\/)?(UTC|GMT|UCT|Zulu|Universal)$/.test(zone))) return "UTC";
  const sign = offset < 0 ? "-" : "+";
  const hours = String(Math.floor(Math.abs(offset) / 60)).padStart(2, "0");
  const minutes = String(Math.abs(offset) % 60).padStart(2, "0");
  const utc = `UTC${sign}${hours}:${minutes}`;
  return zone ? `${zone}, ${utc}` : utc;
}

/** A gap longer than this many buckets breaks the line (shorter ones are joined). */
const JOIN_BUCKETS = 3;

/**
 * Runs of points drawn as one line: a gap breaks it only when it is longer than
 * JOIN_BUCKETS buckets and than twice the usual spacing, so a device that reports every
 * few buckets still draws a line.
 */
function runsOf(points, bucketMs) {
  const gaps = points.slice(1).map((p, i) => p.time - points[i].time).sort((a, b) => a - b);
  const usual = gaps.length ? gaps[Math.floor(gaps.length / 2)] : bucketMs;
  const longest = Math.max(JOIN_BUCKETS * bucketMs, 2 * usual);
  const runs = [];
  for (const p of points) {
    const run = runs[runs.length - 1];
    if (run && p.time - run[run.length - 1].time <= longest) run.push(p);
    else runs.push([p]);
  }
  return runs;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function renderChart() {
  const container = $("chart");
  const caption = $("chart-caption");
  const tableBody = $("points-table").tBodies[0];
  container.replaceChildren();
  tableBody.replaceChildren();
  $("points-zone").textContent = `(${zoneName()})`;

  if (!state.device || !state.metric) {
    caption.textContent = state.devices.length ? "Choose a device and a metric." : "No device to chart yet.";
    return;
  }
  const series = state.series;
  if (!series || series.device_id !== state.device || series.metric !== state.metric) {
    caption.textContent = `Loading ${state.metric} of ${state.device}…`;
    return;
  }

  const points = (Array.isArray(series.points) ? series.points : [])
    .map((p) => ({ ...p, time: Date.parse(p.t) }))
    .filter((p) => Number.isFinite(p.time) && Number.isFinite(p.avg));
  const from = Date.parse(series.from);
  const to = Date.parse(series.to);
  const bucketMs = BUCKETS[series.bucket] ?? MINUTE;

  const width = Math.max(280, Math.round(container.clientWidth || 640));
  drawnWidth = width;
  const height = width < 560 ? 220 : 300;
  const margin = { top: 14, right: 16, bottom: 46, left: 60 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;

  const lows = points.map((p) => (Number.isFinite(p.min) ? p.min : p.avg));
  const highs = points.map((p) => (Number.isFinite(p.max) ? p.max : p.avg));
  const values = valueTicks(
    points.length ? Math.min(...lows) : 0,
    points.length ? Math.max(...highs) : 1,
  );
  const x = (t) => margin.left + ((t - from) / (to - from)) * plotW;
  const y = (v) => margin.top + (1 - (v - values.low) / (values.high - values.low)) * plotH;
  // A bucket is drawn at its middle, inside the range.
  const at = (p) => x(Math.min(to, Math.max(from, p.time + bucketMs / 2)));

  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: "chart-svg",
    role: "img",
    "aria-labelledby": "chart-caption",
  });

  const grid = svg("g", { class: "grid" });
  const yAxis = svg("g", { class: "axis y-axis" });
  const digits = Math.max(0, -Math.floor(Math.log10(values.step)));
  for (const v of values.ticks) {
    const py = y(v);
    grid.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: py, y2: py }));
    yAxis.append(svg("text", { x: margin.left - 8, y: py, "text-anchor": "end", "dominant-baseline": "middle" },
      formatNumber(v, Math.min(digits, 6))));
  }
  const xAxis = svg("g", { class: "axis x-axis" });
  const times = timeTicks(from, to, plotW);
  for (const t of times.ticks) {
    const px = x(t);
    grid.append(svg("line", { x1: px, x2: px, y1: margin.top, y2: margin.top + plotH }));
    xAxis.append(svg("line", { x1: px, x2: px, y1: margin.top + plotH, y2: margin.top + plotH + 5 }));
    // Labels near the ends stay inside the drawing.
    const anchor = px > width - 40 ? "end" : px < 40 ? "start" : "middle";
    xAxis.append(svg("text", { x: px, y: margin.top + plotH + 20, "text-anchor": anchor }, times.label(t)));
  }
  // The ticks are the browser's local times: say which zone they are in.
  xAxis.append(svg("text", { class: "zone", x: width - margin.right, y: height - 6, "text-anchor": "end" },
    `Time (${zoneName(to)})`));
  xAxis.append(svg("line", {
    x1: margin.left, x2: width - margin.right, y1: margin.top + plotH, y2: margin.top + plotH,
  }));
  root.append(grid, xAxis, yAxis);

  // The band and the line break only where readings are missing for a while.
  const runs = runsOf(points, bucketMs);
  const halfBucket = Math.max(2, ((bucketMs / (to - from)) * plotW) / 2);
  const band = runs
    .map((run) => {
      if (run.length === 1) {
        // A bucket on its own: its min-max range as a bar one bucket wide.
        const [p] = run;
        const top = y(Number.isFinite(p.max) ? p.max : p.avg).toFixed(1);
        const bottom = y(Number.isFinite(p.min) ? p.min : p.avg).toFixed(1);
        const left = (at(p) - halfBucket).toFixed(1);
        const right = (at(p) + halfBucket).toFixed(1);
        return `M${left},${top}L${right},${top}L${right},${bottom}L${left},${bottom}Z`;
      }
      const top = run.map((p, i) => `${i ? "L" : "M"}${at(p).toFixed(1)},${y(Number.isFinite(p.max) ? p.max : p.avg).toFixed(1)}`);
      const bottom = run.slice().reverse()
        .map((p) => `L${at(p).toFixed(1)},${y(Number.isFinite(p.min) ? p.min : p.avg).toFixed(1)}`);
      return `${top.join("")}${bottom.join("")}Z`;
    })
    .join("");
  if (band) root.append(svg("path", { class: "band", d: band }));
  const line = runs
    .map((run) => run.map((p, i) => `${i ? "L" : "M"}${at(p).toFixed(1)},${y(p.avg).toFixed(1)}`).join(""))
    .join("");
  if (line) root.append(svg("path", { class: "avg", d: line }));

  const dots = svg("g", { class: "points" });
  for (const p of points) {
    const when = new Date(p.time).toLocaleString();
    const circle = svg("circle", {
      class: "point",
      cx: at(p).toFixed(1),
      cy: y(p.avg).toFixed(1),
      r: points.length > 120 ? 1.6 : 3,
      "data-t": p.t,
      "data-avg": p.avg,
      "data-min": p.min,
      "data-max": p.max,
      "data-count": p.count,
    });
    circle.append(svg("title", {},
      `${when}: avg ${formatNumber(p.avg, 3)} (min ${formatNumber(p.min, 3)}, max ${formatNumber(p.max, 3)}, ${integer.format(p.count)} ${p.count === 1 ? "reading" : "readings"})`));
    dots.append(circle);

    const row = document.createElement("tr");
    row.append(
      el("td", when),
      el("td", formatNumber(p.min, 3), "num"),
      el("td", formatNumber(p.avg, 3), "num"),
      el("td", formatNumber(p.max, 3), "num"),
      el("td", formatNumber(p.count, 0), "num"),
    );
    tableBody.append(row);
  }
  root.append(dots);

  if (points.length === 0) {
    root.append(svg("text", {
      class: "empty", x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle",
    }, "No numeric readings in this range"));
  }
  container.append(root);

  const rangeLabel = document.querySelector(`input[name="range"][value="${state.range}"]`)?.nextElementSibling?.textContent ?? state.range;
  caption.textContent = points.length
    ? `${state.metric} of ${state.device}, last ${rangeLabel}: ${points.length} ${series.bucket} buckets, average line with min–max band.`
    : `${state.metric} of ${state.device}, last ${rangeLabel}: no numeric readings.`;
  container.dataset.points = String(points.length);
}

// ---- loading ----

async function loadSeries() {
  const request = ++state.seriesRequest;
  if (!state.device || !state.metric) {
    state.series = null;
    renderChart();
    return;
  }
  renderChart();
  const to = new Date(now());
  const from = new Date(to.getTime() - RANGES[state.range]);
  const query = new URLSearchParams({ metric: state.metric, from: from.toISOString(), to: to.toISOString() });
  try {
    const series = await api(`api/devices/${encodeURIComponent(state.device)}/series?${query}`);
    if (request !== state.seriesRequest) return; // the selection changed meanwhile
    state.series = series;
    state.seriesError = null;
    renderChart();
  } catch (error) {
    if (request !== state.seriesRequest) return;
    state.seriesError = `series: ${error.message}`;
  }
  renderStatus();
}

async function refresh() {
  if (state.inFlight) return;
  state.inFlight = true;
  state.lastAttempt = Date.now();
  const errors = [];
  const [devices, stats] = await Promise.allSettled([api("api/devices"), api("api/stats")]);
  if (devices.status === "fulfilled") {
    const body = devices.value;
    const generated = Date.parse(body.generated_at);
    if (Number.isFinite(generated)) state.clockOffset = generated - Date.now();
    state.devices = Array.isArray(body.devices) ? body.devices : [];
    state.truncated = Boolean(body.truncated);
    await reconcileSelection();
    renderDevices();
  } else {
    errors.push(`devices: ${devices.reason.message}`);
  }
  if (stats.status === "fulfilled") renderStats(stats.value);
  else errors.push(`stats: ${stats.reason.message}`);

  state.error = errors.length ? errors.join("; ") : null;
  if (devices.status === "fulfilled") {
    await loadSeries();
    if (!state.error && !state.seriesError) state.lastSuccess = Date.now();
  }
  document.body.dataset.loaded = "true";
  state.inFlight = false;
  renderStatus();
}

// ---- wiring ----

$("device-select").addEventListener("change", (event) => selectDevice(event.target.value));
$("metric-select").addEventListener("change", (event) => {
  state.metric = event.target.value;
  state.chosenMetric = state.metric;
  loadSeries();
});
for (const radio of document.querySelectorAll('input[name="range"]')) {
  radio.addEventListener("change", () => {
    if (radio.checked) {
      state.range = radio.value;
      loadSeries();
    }
  });
}
$("controls").addEventListener("submit", (event) => event.preventDefault());
$("refresh").addEventListener("click", () => refresh());

// One clock: the status line every second, a refresh every 10 s while visible.
setInterval(() => {
  if (!document.hidden && Date.now() - state.lastAttempt >= REFRESH_MS) refresh();
  else renderStatus();
}, 1000);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && Date.now() - state.lastAttempt >= REFRESH_MS) refresh();
  else renderStatus();
});

// Redraw when the chart's width changes (window resized, phone rotated, layout settled).
let drawnWidth = 0;
let resizeTimer;
new ResizeObserver(([entry]) => {
  const width = Math.round(entry.contentRect.width);
  if (Math.abs(width - drawnWidth) < 2) return;
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(renderChart, 100);
}).observe($("chart"));

refresh();
