// Stockwire operations console. Plain browser JavaScript, no build step and no library: the one
// protocol it needs beyond fetch (graphql-transport-ws) is the small LiveSocket below.
"use strict";

const KEY_SLOT = "stockwire.operatorKey";
const PAGE = 50; // SKUs per grid page: 50 x 20 locations = 1,000 cells, one stockLevels call
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

let key = sessionStorage.getItem(KEY_SLOT);
let live = null;
let locations = [];
let channels = [];

// ---- API ------------------------------------------------------------------------------------

class ApiError extends Error {}

async function gql(query, variables = {}) {
  const response = await fetch("/graphql", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify({ query, variables }),
  });
  if (response.status === 401) {
    signOut("The key was refused (unknown or revoked).");
    throw new ApiError("unauthenticated");
  }
  const body = await response.json();
  if (body.errors && body.errors.length) {
    const e = body.errors[0];
    const code = e.extensions && e.extensions.code;
    throw new ApiError(code === "FORBIDDEN" ? `This key may not do that: ${e.message}` : e.message);
  }
  return body.data;
}

// graphql-transport-ws: connection_init carries the key; subscriptions are re-sent after a reconnect,
// and a subscription with codes starts with the current state, so the page resyncs by itself.
class LiveSocket {
  constructor(onState) {
    this.onState = onState;
    this.subs = new Map();
    this.nextId = 1;
    this.retry = 0;
    this.closed = false;
    this.connect();
  }

  connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`;
    const ws = new WebSocket(url, "graphql-transport-ws");
    this.ws = ws;
    this.ready = false;
    ws.onopen = () => this.send({ type: "connection_init", payload: { authorization: `Bearer ${key}` } });
    ws.onmessage = (m) => this.receive(JSON.parse(m.data));
    ws.onclose = (e) => {
      this.ready = false;
      if (this.closed) return;
      if (e.code === 4403) return signOut("The key was refused on the live connection.");
      this.onState(false);
      const delay = Math.min(30000, 500 * 2 ** this.retry++);
      setTimeout(() => !this.closed && this.connect(), delay);
    };
  }

  send(message) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  receive(msg) {
    if (msg.type === "connection_ack") {
      this.ready = true;
      this.retry = 0;
      this.onState(true);
      for (const [id, s] of this.subs) this.send({ id, type: "subscribe", payload: s.payload });
    } else if (msg.type === "ping") {
      this.send({ type: "pong" });
    } else if (msg.type === "next") {
      const s = this.subs.get(msg.id);
      if (s && msg.payload.data) s.onData(msg.payload.data);
      if (msg.payload.errors) showError(msg.payload.errors[0].message);
    } else if (msg.type === "error") {
      showError(msg.payload && msg.payload[0] ? msg.payload[0].message : "subscription refused");
    }
  }

  subscribe(query, variables, onData) {
    const id = String(this.nextId++);
    const payload = { query, variables };
    this.subs.set(id, { payload, onData });
    if (this.ready) this.send({ id, type: "subscribe", payload });
    return () => {
      if (this.subs.delete(id) && this.ready) this.send({ id, type: "complete" });
    };
  }

  close() {
    this.closed = true;
    this.ws.close();
  }
}

// ---- sign-in and navigation ------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message || "";
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_SLOT);
  key = null;
  if (live) live.close();
  live = null;
  $("signin-error").textContent = reason || "";
  render();
}

async function signIn(candidate) {
  key = candidate;
  try {
    await gql("{ apiKeys { id } }"); // admin scope only: the same check every console view needs
  } catch (e) {
    key = null;
    $("signin-error").textContent = e.message === "unauthenticated" ? "The key was refused." : e.message;
    return;
  }
  sessionStorage.setItem(KEY_SLOT, candidate);
  $("key").value = "";
  render();
}

const views = ["signin", "grid-view", "problems-view", "sku-view"];
let current = null;
let leaveView = () => {};

async function render() {
  showError("");
  leaveView();
  leaveView = () => {};
  const signedIn = Boolean(key);
  for (const id of ["nav", "signout", "live"]) $(id).hidden = !signedIn;
  if (!signedIn) return showView("signin");
  if (!live) {
    live = new LiveSocket((on) => {
      $("live").textContent = on ? "live" : "reconnecting";
      $("live").classList.toggle("on", on);
    });
    await loadReferenceData();
  }
  const hash = location.hash || "#/grid";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  try {
    if (hash.startsWith("#/sku/")) await showSku(decodeURIComponent(hash.slice(6)));
    else if (hash.startsWith("#/problems")) await showProblems();
    else await showGrid();
  } catch (e) {
    if (!(e instanceof ApiError && e.message === "unauthenticated")) showError(e.message);
  }
}

function showView(id) {
  current = id;
  for (const v of views) $(v).hidden = v !== id;
}

async function loadReferenceData() {
  const data = await gql("{ locations { code name active } channels { code name locationCodes } }");
  locations = data.locations;
  channels = data.channels;
  $("location-filter").innerHTML =
    '<option value="">all locations</option>' + locations.map((l) => `<option>${esc(l.code)}</option>`).join("");
  $("channel-filter").innerHTML =
    '<option value="">all channels</option>' + channels.map((c) => `<option>${esc(c.code)}</option>`).join("");
}

// ---- the grid: one page of SKUs x the chosen locations, live ---------------------------------

const grid = { cursors: [null], page: 0, hasNext: false, cells: new Map(), versions: new Map() };

function gridColumns() {
  const loc = $("location-filter").value;
  const channel = channels.find((c) => c.code === $("channel-filter").value);
  let codes = locations.map((l) => l.code);
  if (channel) codes = codes.filter((c) => channel.locationCodes.includes(c));
  if (loc) codes = codes.filter((c) => c === loc);
  return codes;
}

async function showGrid() {
  showView("grid-view");
  const started = performance.now();
  $("grid").dataset.state = "loading";
  const columns = gridColumns();
  const search = $("search").value.trim() || null;
  const page = await gql(
    `query($search: String, $first: Int, $after: String) {
       skus(search: $search, first: $first, after: $after) { nodes { code name active } pageInfo { hasNextPage endCursor } }
     }`,
    { search, first: PAGE, after: grid.cursors[grid.page] },
  );
  const skus = page.skus.nodes;
  grid.hasNext = page.skus.pageInfo.hasNextPage;
  grid.cursors[grid.page + 1] = page.skus.pageInfo.endCursor;
  $("prev").disabled = grid.page === 0;
  $("next").disabled = !grid.hasNext;
  $("page-label").textContent = `page ${grid.page + 1}`;

  const codes = skus.map((s) => s.code);
  let head = `<thead><tr><th>SKU</th><th>name</th><th class="num">total</th>`;
  head += columns.map((c) => `<th class="num">${esc(c)}</th>`).join("") + "</tr></thead>";
  let body = "<tbody>";
  for (const s of skus) {
    body += `<tr data-sku="${esc(s.code)}"><td class="sku"><a href="#/sku/${encodeURIComponent(s.code)}">${esc(s.code)}</a></td>`;
    body += `<td>${esc(s.name)}${s.active ? "" : " <em>(inactive)</em>"}</td><td class="num total"></td>`;
    body += columns.map((c) => `<td class="num cell none" data-sku="${esc(s.code)}" data-loc="${esc(c)}">·</td>`).join("");
    body += "</tr>";
  }
  if (!skus.length) body += `<tr><td colspan="${columns.length + 3}" class="empty">no SKU matches</td></tr>`;
  $("grid").innerHTML = head + body + "</tbody>";
  grid.cells = new Map();
  grid.versions = new Map();
  for (const td of $("grid").querySelectorAll("td.cell")) grid.cells.set(`${td.dataset.sku}\u001f${td.dataset.loc}`, td);

  if (codes.length && columns.length) {
    const levels = await gql(
      `query($skus: [String!], $locs: [String!], $first: Int) {
         stockLevels(skuCodes: $skus, locationCodes: $locs, first: $first) {
           skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version
         }
       }`,
      { skus: codes, locs: columns, first: 1000 },
    );
    for (const level of levels.stockLevels) paintCell(level, false);
    // only what is on screen is followed: this page's SKUs at these locations
    const stop = live.subscribe(
      `subscription($skus: [String!], $locs: [String!]) {
         stockLevelChanged(skuCodes: $skus, locationCodes: $locs) {
           skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version
         }
       }`,
      { skus: codes, locs: columns },
      (data) => paintCell(data.stockLevelChanged, true),
    );
    leaveView = stop;
  }
  for (const s of codes) paintTotal(s);
  $("grid").dataset.state = "ready";
  $("grid").dataset.loadMs = String(Math.round(performance.now() - started));
}

function paintCell(level, flash) {
  const id = `${level.skuCode}\u001f${level.locationCode}`;
  const td = grid.cells.get(id);
  if (!td || (grid.versions.get(id) ?? -1) >= level.version) return; // a repeat or an older state
  grid.versions.set(id, level.version);
  td.textContent = level.available;
  td.dataset.available = level.available;
  td.classList.remove("none");
  td.classList.toggle("oversold", level.oversold > 0);
  td.title =
    `on hand ${level.onHand}, committed ${level.committed}, reserved ${level.reserved}, ` +
    `unavailable ${level.unavailable}, safety ${level.safetyStock}, incoming ${level.incoming}` +
    (level.oversold > 0 ? `, OVERSOLD ${level.oversold}` : "") + ` (v${level.version})`;
  if (flash) {
    td.classList.add("flash");
    setTimeout(() => td.classList.remove("flash"), 50);
    paintTotal(level.skuCode);
  }
}

function paintTotal(sku) {
  const row = $("grid").querySelector(`tr[data-sku="${CSS.escape(sku)}"]`);
  if (!row) return;
  let total = 0;
  for (const td of row.querySelectorAll("td.cell")) total += Math.max(0, Number(td.dataset.available || 0));
  row.querySelector("td.total").textContent = total; // what the shown locations can sell, as availability adds up
}

// ---- what is wrong now -----------------------------------------------------------------------

function table(id, headers, rows, emptyText) {
  const head = "<thead><tr>" + headers.map((h) => `<th>${esc(h)}</th>`).join("") + "</tr></thead>";
  const body = rows.length
    ? rows.map((r) => "<tr>" + r.map((c) => `<td>${c}</td>`).join("") + "</tr>").join("")
    : `<tr><td colspan="${headers.length}" class="empty">${esc(emptyText)}</td></tr>`;
  $(id).innerHTML = head + "<tbody>" + body + "</tbody>";
}

const skuLink = (code) => `<a href="#/sku/${encodeURIComponent(code)}">${esc(code)}</a>`;
const alerts = [];
let alertSubs = [];

async function showProblems() {
  showView("problems-view");
  const data = await gql(`{
    oversoldPositions(first: 200) { skuCode locationCode onHand committed reserved unavailable oversold }
    snapshotCorrections(first: 200) { skuCode locationCode quantity onHandChange occurredAt source }
    orphanedHolds { kind id skuCode locationCode quantity since }
  }`);
  table("oversold", ["SKU", "location", "on hand", "committed", "reserved", "unavailable", "oversold"],
    data.oversoldPositions.map((p) => [skuLink(p.skuCode), esc(p.locationCode), p.onHand, p.committed, p.reserved, p.unavailable, `<b class="error">${p.oversold}</b>`]),
    "nothing oversold");
  table("drift", ["SKU", "location", "counted", "on hand changed by", "snapshot taken", "source"],
    data.snapshotCorrections.map((d) => [skuLink(d.skuCode), esc(d.locationCode), d.quantity, d.onHandChange > 0 ? `+${d.onHandChange}` : d.onHandChange, esc(when(d.occurredAt)), esc(d.source)]),
    "no drift in the last applied snapshot");
  table("orphans", ["kind", "hold", "SKU", "location", "quantity", "since"],
    data.orphanedHolds.map((h) => [esc(h.kind), esc(h.id), skuLink(h.skuCode), esc(h.locationCode), h.quantity, esc(when(h.since))]),
    "no orphaned hold");

  const rows = [];
  for (const c of channels) {
    const pubs = await gql(
      `query($c: String!) { channelPublications(channelCode: $c, outOfSyncOnly: true) {
         skuCode ackedVersion ackedAvailable ackedAt currentVersion currentAvailable attempts lastError } }`,
      { c: c.code },
    );
    for (const p of pubs.channelPublications) {
      rows.push([esc(c.code), skuLink(p.skuCode), p.ackedAvailable ?? "never", p.ackedVersion ?? "", esc(when(p.ackedAt)),
        p.currentAvailable, p.currentVersion, p.attempts, `<span class="error">${esc(p.lastError)}</span>`]);
    }
  }
  table("out-of-sync", ["channel", "SKU", "acknowledged", "ack version", "acknowledged at", "now", "version", "failed attempts", "last error"],
    rows, "every channel endpoint shows the current figures");

  if (!alertSubs.length && channels.length) {
    alertSubs = channels.map((c) =>
      live.subscribe(
        `subscription($c: String!) { channelAlerts(channelCode: $c) { channelCode skuCode kind available previous version } }`,
        { c: c.code },
        (d) => {
          alerts.unshift({ ...d.channelAlerts, at: new Date().toISOString() });
          alerts.length = Math.min(alerts.length, 200);
          if (current === "problems-view") paintAlerts();
        },
      ),
    );
  }
  paintAlerts();
}

function paintAlerts() {
  table("alerts", ["at", "channel", "SKU", "alert", "available", "previous"],
    alerts.map((a) => [esc(when(a.at)), esc(a.channelCode), skuLink(a.skuCode), esc(a.kind), a.available, a.previous ?? ""]),
    "no alert since this page opened");
}

// ---- one SKU: positions, holds, ledger ---------------------------------------------------------

const ledgerState = { sku: null, after: null };
const LEDGER_TYPES = ["RECEIVED", "INCOMING", "ADJUSTED", "COUNTED", "SOLD", "ORDER_PLACED", "ORDER_CANCELLED",
  "SHIPPED", "RETURNED", "DAMAGED", "REPAIRED", "WRITTEN_OFF", "TRANSFER_OUT", "TRANSFER_IN", "SAFETY_STOCK_SET",
  "RESERVED", "RESERVATION_COMMITTED", "RESERVATION_RELEASED", "RESERVATION_EXPIRED", "TRANSFER_EXPECTED"];

async function showSku(code) {
  showView("sku-view");
  const data = await gql(
    `query($c: [String!], $code: String!) {
       skus(search: $code, first: 50) { nodes { code name active } }
       stockLevels(skuCodes: $c, first: 100) { locationCode onHand committed reserved unavailable safetyStock incoming available oversold version updatedAt }
       activeHolds(skuCode: $code) { kind id locationCode quantity backordered channelCode reference createdAt expiresAt }
     }`,
    { c: [code], code },
  );
  const sku = data.skus.nodes.find((s) => s.code === code);
  $("sku-title").textContent = sku ? `${sku.code} · ${sku.name}${sku.active ? "" : " (inactive)"}` : `${code} (unknown SKU)`;
  const paintLevels = (levels) =>
    table("sku-levels", ["location", "available", "on hand", "committed", "reserved", "unavailable", "safety", "incoming", "oversold", "version", "updated"],
      levels.map((l) => [esc(l.locationCode), `<b>${l.available}</b>`, l.onHand, l.committed, l.reserved, l.unavailable, l.safetyStock, l.incoming,
        l.oversold ? `<b class="error">${l.oversold}</b>` : 0, l.version, esc(when(l.updatedAt))]),
      "no stock recorded anywhere");
  const byLocation = new Map(data.stockLevels.map((l) => [l.locationCode, l]));
  paintLevels(data.stockLevels);
  leaveView = live.subscribe(
    `subscription($c: [String!]) { stockLevelChanged(skuCodes: $c) {
       locationCode onHand committed reserved unavailable safetyStock incoming available oversold version updatedAt } }`,
    { c: [code] },
    (d) => {
      const l = d.stockLevelChanged;
      if ((byLocation.get(l.locationCode)?.version ?? -1) >= l.version) return;
      byLocation.set(l.locationCode, l);
      paintLevels([...byLocation.values()].sort((a, b) => a.locationCode.localeCompare(b.locationCode)));
    },
  );
  table("sku-holds", ["kind", "hold", "location", "quantity", "backordered", "channel", "order / cart / source", "since", "expires"],
    data.activeHolds.map((h) => [esc(h.kind), esc(h.id), esc(h.locationCode), h.quantity, h.backordered, esc(h.channelCode), esc(h.reference), esc(when(h.createdAt)), esc(when(h.expiresAt))]),
    "no active hold");
  if ($("ledger-type").options.length === 1) {
    $("ledger-type").innerHTML += LEDGER_TYPES.map((t) => `<option>${t}</option>`).join("");
  }
  ledgerState.sku = code;
  ledgerState.after = null;
  $("ledger").innerHTML = "";
  await loadLedger();
}

async function loadLedger() {
  const at = (v) => (v ? new Date(v).toISOString() : null); // datetime-local is the operator's local time
  const type = $("ledger-type").value;
  const data = await gql(
    `query($sku: String, $after: String, $types: [LedgerEntryKind!], $source: String, $ref: String, $from: DateTime, $before: DateTime) {
       inventoryEvents(skuCode: $sku, first: 50, after: $after, types: $types, source: $source, reference: $ref,
                       occurredFrom: $from, occurredBefore: $before) {
         nodes { id source actor { keyId name prefix } externalId type status locationCode quantity occurredAt receivedAt reason reference onHandChange committedChange reservedChange unavailableChange drift version }
         pageInfo { hasNextPage endCursor }
       }
     }`,
    {
      sku: ledgerState.sku, after: ledgerState.after, types: type ? [type] : null,
      source: $("ledger-source").value.trim() || null, ref: $("ledger-reference").value.trim() || null,
      from: at($("ledger-from").value), before: at($("ledger-before").value),
    },
  );
  const change = (n) => (n > 0 ? `+${n}` : n === 0 ? "" : String(n));
  // who: the system that reported it (source) and the key that recorded it (the ledger's actor)
  const who = (e) =>
    `${esc(e.source)} <span class="actor" title="${esc(e.actor.prefix ? `key ${e.actor.prefix}` : "Stockwire itself")}">` +
    `by ${esc(e.actor.name)}</span>`;
  const rows = data.inventoryEvents.nodes.map((e) => [
    esc(when(e.occurredAt)), who(e), esc(e.type), esc(e.status), esc(e.locationCode), e.quantity,
    change(e.onHandChange), change(e.committedChange), change(e.reservedChange), change(e.unavailableChange),
    e.drift ? `<b class="error">${e.drift}</b>` : "", esc(e.reason), esc(e.reference), esc(e.externalId), esc(when(e.receivedAt)),
  ]);
  const headers = ["when", "who (source, by key)", "what", "status", "location", "qty", "on hand", "committed", "reserved", "unavailable", "drift", "why", "reference", "external id", "received"];
  if (ledgerState.after === null) table("ledger", headers, rows, "no ledger entry matches");
  else $("ledger").querySelector("tbody").insertAdjacentHTML("beforeend", rows.map((r) => "<tr>" + r.map((c) => `<td>${c}</td>`).join("") + "</tr>").join(""));
  ledgerState.after = data.inventoryEvents.pageInfo.endCursor;
  $("ledger-more").hidden = !data.inventoryEvents.pageInfo.hasNextPage;
}

// ---- wiring ------------------------------------------------------------------------------------

function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

function restartGrid() {
  grid.cursors = [null];
  grid.page = 0;
  render();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
  $("signout").addEventListener("click", () => signOut(""));
  $("search").addEventListener("input", debounce(restartGrid, 300));
  $("location-filter").addEventListener("change", restartGrid);
  $("channel-filter").addEventListener("change", restartGrid);
  $("prev").addEventListener("click", () => { grid.page = Math.max(0, grid.page - 1); render(); });
  $("next").addEventListener("click", () => { if (grid.hasNext) { grid.page += 1; render(); } });
  $("ledger-filters").addEventListener("submit", (e) => { e.preventDefault(); ledgerState.after = null; loadLedger().catch((x) => showError(x.message)); });
  $("ledger-more").addEventListener("click", () => loadLedger().catch((x) => showError(x.message)));
  window.addEventListener("hashchange", render);
  render();
});
