// The gateway's status page: polls the read API and draws what it answers. No library, no
// build step, nothing fetched from outside the gateway. With [metrics] token_file set, the API
// answers 401 until the token is given in the form; it is kept for this browser tab only.
"use strict";

const POLL_MS = 1000;          // the figures at a glance and the charts
const TABLES_EVERY = 5;        // polls between two reads of the devices, dead letters, rejects
const HISTORY = 300;           // chart points kept: five minutes at one a second
const TOKEN_KEY = "gateway-token";
const DEVICES_PAGE = 100;      // devices per page of the list

// The devices shown: a page after a name ("" is the first), or one device found by name.
const deviceView = { after: "", name: null, next: null };

const history = { backlog: [], lag: [], latency: [], batch: [] };
let previous = null;           // {t, received, delivered} of the last poll, for the rates
let polls = 0;
let timer = null;

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401) {
    document.getElementById("login").hidden = false;
    throw new Error("token required");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function show(id, text, value, state) {
  const element = document.getElementById(id);
  element.textContent = text;
  element.dataset.value = value === undefined ? text : String(value);
  if (state !== undefined) element.className = "state " + state;
}

function number(value, digits) {
  return value.toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function seconds(value) {
  if (value < 60) return number(value, 1) + " s";
  if (value < 3600) return number(value / 60, 1) + " min";
  return number(value / 3600, 1) + " h";
}

function duration(value) {
  return value < 1 ? number(value * 1000) + " ms" : seconds(value);
}

function glance(status, now) {
  const run = status.runtime;
  show("broker", run.mqtt_connected ? "connected" : "disconnected", run.mqtt_connected,
       run.mqtt_connected ? "ok" : "bad");
  show("sink", sinkState(run.sink), run.sink.state, run.sink.state === "ok" ? "ok" : "bad");
  const paused = run.admission.paused;
  document.getElementById("policy").textContent = "policy " + run.admission.policy;
  show("admission", paused ? "paused" : "taking",
       paused ? "paused" : "taking", paused ? "bad" : "ok");
  show("fill", number(status.fill_ratio * 100, 1) + " %", status.fill_ratio);
  show("buffered", number(status.readings), status.readings);
  // The compact policy's summaries of older readings, by step ("60s"); none under the others.
  const steps = Object.entries(status.summaries ?? {});
  const summaries = steps.reduce((sum, [, count]) => sum + count, 0);
  show("summaries", number(summaries), summaries);
  document.getElementById("summary-steps").textContent =
    steps.map(([step, count]) => step + " " + number(count)).join(" · ");
  show("lag", seconds(run.lag_s), run.lag_s);
  show("dead-count", number(status.dead_letters), status.dead_letters);
  // The worst of the last minute: a stall past [metrics] max_loop_lag_s fails /healthz too.
  const loopLag = run.loop_lag_max_s ?? 0;
  const stalled = run.loop_lag_limit_s > 0 && loopLag > run.loop_lag_limit_s;
  show("loop-lag", duration(loopLag), loopLag, stalled ? "bad" : "ok");
  document.getElementById("loop-lag-p99").textContent =
    "most in the last minute; p99 " + duration(run.loop_lag_p99_s ?? 0);
  wear(run.disk);
  const readings = run.readings;
  if (previous !== null && now > previous.t) {
    const dt = (now - previous.t) / 1000;
    const rateIn = Math.max(0, (readings.received - previous.received) / dt);
    const rateOut = Math.max(0, (readings.delivered - previous.delivered) / dt);
    show("rate-in", number(rateIn), rateIn);
    show("rate-out", number(rateOut), rateOut);
  }
  previous = { t: now, received: readings.received, delivered: readings.delivered };
  document.getElementById("version").textContent = run.version ? "version " + run.version : "";
  document.getElementById("updated").textContent =
    "updated " + new Date(now).toLocaleTimeString();
}

function sinkState(sink) {
  const failed = sink.failed_writes_in_a_row;
  if (sink.state === "ok") return "ok";
  return "failing (" + failed + (failed === 1 ? " write)" : " writes)");
}

// One row per database, shown only with two or more: with one, the tiles above say it all
// (its state is the Database tile, its lag the Lag one). A parent of workers gives no list.
function sinks(list) {
  document.getElementById("sinks-section").hidden = list.length < 2;
  if (list.length < 2) return;
  fill("sinks", list, [
    [s => s.name], [s => sinkState(s), s => "state " + (s.state === "ok" ? "ok" : "bad")],
    [s => seconds(s.lag_s), "num"], [s => number(s.backlog_readings), "num"],
    [s => number(s.skipped_readings ?? 0), "num"],
    [s => s.batch_size === undefined ? null : number(s.batch_size), "num"],
  ]);
}

// The pair, when this gateway has a standby (or was taken over): shown only then.
const DURABILITY = {
  sync: "wait for the standby", degraded: "standby away: local only", async: "do not wait",
};

function standbyState(peer) {
  if (!peer) return "none seen yet";
  if (!peer.online) return peer.node + " offline";
  return peer.node + (peer.following ? " following" : " catching up");
}

function replication(pair) {
  document.getElementById("replication-section").hidden = !pair;
  if (!pair) return;
  const held = pair.durability === "degraded" && pair.standby_away === "hold";
  fill("replication", [pair], [
    [p => p.role, p => "state " + (p.role === "primary" ? "ok" : "bad")],
    [p => p.node],
    [p => held ? "held until the standby is back" : DURABILITY[p.durability],
     p => "state " + (p.durability === "degraded" ? "bad" : "ok")],
    [p => standbyState(p.peer)], [p => number(p.shipped_records), "num"],
    [p => number(p.last_record), "num"], [p => number(p.confirmed_record), "num"],
    [p => number(p.lag_records) + " records, " + seconds(p.lag_s), "num"],
    [p => number(p.held_acks), "num"],
  ]);
}

function bytes(value) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
  return number(value, i === 0 ? 0 : 1) + " " + units[i];
}

// Flash wear: absent where /proc/self/io is unreadable, null figures while not known yet.
function wear(disk) {
  const known = (value) => disk !== undefined && value !== null && value !== undefined;
  const perReading = disk?.bytes_per_reading;
  // One decimal: a gateway batching well writes a few bytes per reading.
  show("disk-per-reading", known(perReading) ? number(perReading, 1) + " B" : "-", perReading ?? "");
  document.getElementById("disk-written").textContent =
    disk ? bytes(disk.written_bytes) + " since start" : "not readable here";
  const perDay = disk?.bytes_per_day;
  // Not readable here (or on one of the workers) is no figure ever, not one to wait for.
  show("disk-per-day", known(perDay) ? bytes(perDay) : disk ? "measuring" : "-", perDay ?? "");
  const perHour = disk?.bytes_per_hour;
  document.getElementById("disk-per-hour").textContent =
    known(perHour) ? bytes(perHour) + " in the last hour" : "";
  const life = disk?.projected_life_days;
  let text = "-";
  if (known(disk?.endurance_remaining_bytes)) {
    if (known(life)) text = number(life) + " days";
    else text = perDay === 0 ? "no writes" : "measuring";
  }
  show("disk-life", text, life ?? "");
  // Under a year left is what GatewayFlashWearing alerts on.
  document.getElementById("disk-life").className =
    known(life) && life < 365 ? "figure bad" : "figure";
}

function remember(status) {
  const run = status.runtime;
  const add = (name, value) => {
    const series = history[name];
    series.push(value);
    if (series.length > HISTORY) series.shift();
  };
  add("backlog", status.readings);
  add("lag", run.lag_s);
  add("latency", run.last_write_s ?? 0);
  add("batch", run.batch_size);
  for (const name of Object.keys(history)) draw(name, history[name]);
}

function draw(name, series) {
  const svg = document.getElementById("chart-" + name);
  const top = Math.max(...series, 1e-9);
  const step = 300 / Math.max(HISTORY - 1, 1);
  const start = HISTORY - series.length;
  const points = series.map((v, i) =>
    ((start + i) * step).toFixed(1) + "," + (100 - (v / top) * 96).toFixed(1)).join(" ");
  svg.innerHTML = '<polyline points="' + points + '"></polyline>';
  const last = series[series.length - 1];
  document.getElementById("axis-" + name).textContent =
    "now " + number(last, 3) + ", highest " + number(top, 3) + " in the last " +
    seconds(series.length * POLL_MS / 1000);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
}

function fill(id, rows, columns) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of rows) {
    const row = body.insertRow();
    // A class may depend on the row (a sink's state): a function of the item then.
    for (const [key, className] of columns) {
      cell(row, key(item), typeof className === "function" ? className(item) : className);
    }
  }
  if (rows.length === 0) cell(body.insertRow(), "none");
}

function devicesPath() {
  const query = new URLSearchParams({ limit: String(DEVICES_PAGE) });
  if (deviceView.name !== null) query.set("name", deviceView.name);
  else if (deviceView.after) query.set("after", deviceView.after);
  return "api/v1/devices?" + query.toString();
}

async function tables() {
  const [devices, dead, rejects] = await Promise.all([
    api(devicesPath()), api("api/v1/dead-letters?limit=20"), api("api/v1/rejects?limit=20"),
  ]);
  deviceView.next = devices.next;
  document.getElementById("devices-next").disabled = devices.next === null;
  document.getElementById("devices-count").textContent = deviceView.name !== null
    ? "(" + (devices.devices.length ? "found" : "no device named so") + ")"
    : "(" + number(devices.devices.length) + " of " + number(devices.total) + ")";
  fill("devices", devices.devices, [
    [d => d.device], [d => number(d.buffered_readings), "num"],
    [d => d.oldest_buffered_age_s === null ? null : seconds(d.oldest_buffered_age_s), "num"],
    [d => d.last_seen],
  ]);
  fill("dead-letters", dead.dead_letters, [
    [d => d.id, "num"], [d => d.device], [d => d.reason], [d => d.line, "point"],
  ]);
  fill("rejects", rejects.rejects, [
    [r => new Date(r.ts_ns / 1e6).toLocaleTimeString()], [r => r.topic], [r => r.reason],
    [r => r.detail],
  ]);
  await sparkplug();
}

// Shown only where edge nodes were seen; a server without the path (a parent of workers,
// which cannot read Sparkplug B) leaves it hidden.
async function sparkplug() {
  let nodes = [];
  try {
    nodes = (await api("api/v1/sparkplug")).nodes;
  } catch (error) {
    nodes = [];
  }
  const rows = [];
  for (const node of nodes) {
    rows.push({ ...node, device: null });
    for (const device of node.devices) {
      rows.push({ ...device, group: node.group, edge_node: node.edge_node });
    }
  }
  document.getElementById("sparkplug-section").hidden = rows.length === 0;
  fill("sparkplug", rows, [
    [r => r.group], [r => r.edge_node], [r => r.device],
    [r => r.online ? "online" : "offline"], [r => number(r.metrics), "num"],
    [r => r.birth_ns ? new Date(r.birth_ns / 1e6).toLocaleString() : null],
  ]);
}

async function poll() {
  try {
    const status = await api("api/v1/status?top=0");
    document.getElementById("login").hidden = true;
    const now = Date.now();
    glance(status, now);
    sinks(status.runtime.sinks ?? []);
    replication(status.runtime.replication);
    remember(status);
    if (polls % TABLES_EVERY === 0) await tables();
    polls += 1;
  } catch (error) {
    document.getElementById("updated").textContent = "not updated: " + error.message;
  }
  timer = setTimeout(poll, POLL_MS);
}

// Paging and search redraw at once instead of at the next round of the tables.
function showDevices(after, name) {
  deviceView.after = after;
  deviceView.name = name;
  tables().catch(error => {
    document.getElementById("updated").textContent = "not updated: " + error.message;
  });
}

document.getElementById("device-search").addEventListener("submit", event => {
  event.preventDefault();
  const name = document.getElementById("device-name").value;
  showDevices("", name === "" ? null : name);
});
document.getElementById("devices-first").addEventListener("click", () => showDevices("", null));
document.getElementById("devices-next").addEventListener("click", () => {
  if (deviceView.next !== null) showDevices(deviceView.next, null);
});

document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  clearTimeout(timer);
  poll();
});

poll();
