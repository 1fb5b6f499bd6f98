// Portal: one show. Live sales and occupancy from the live seat map socket (the customer
// page's, /api/shows/{id}/live) over the show's counts; house seats picked on the seat map
// (the customers' renderer) and blocked / released through /partner/v1/shows/{id}/blocks;
// the waiting-room switch; prices and the start time (PUT the show); cancelling, with what
// was refunded.
import { $, say } from "./page.js";
import { money } from "./api.js";
import { LiveSeats } from "./live.js";
import { PALETTE, SeatMap } from "./seatmap.js";
import {
  call, el, enc, fromMinor, fromWall, get, isoZ, send, toMinor, values, wallDate, wallTime,
} from "./portal-api.js";
import { moveShow, showBody } from "./portal-schedule.js";

/** The customers' seat map, where the partner may also pick blocked (house) seats, to
 *  release them. */
class HouseSeatMap extends SeatMap {
  activate(id) {
    this.setFocus(id, true);
    const shown = this.shown(id);
    if (shown === "free" || shown === "selected" || shown === "blocked") this.onToggle(id);
  }

  paint(id) {
    super.paint(id);
    const g = this.nodes.get(id);
    if (g && this.shown(id) === "blocked") g.setAttribute("aria-disabled", "false");
  }
}

const st = { id: null, show: null, etag: null, data: null, map: null, live: null, picked: [], tz: "UTC", counts: null };

export async function mount([showId]) {
  st.id = showId;
  st.picked = [];
  $("cancel-result").hidden = true;
  $("show-customer").href = `/static/show.html?show=${enc(showId)}`;
  st.counts = null;
  const { data: show, etag } = await call(`/partner/v1/shows/${enc(showId)}`);
  st.show = show;
  st.etag = etag;
  $("show-back").href = `#/schedule/${enc(show.screen_id)}`;
  let data = null;
  try {
    data = await get(`/api/shows/${enc(showId)}/seatmap`);
  } catch (e) {
    if (show.status !== "cancelled") say(`The seat map could not be loaded: ${e.message}`);
  }
  st.data = data;
  const info = data ? data.show : null;
  st.tz = info ? info.timezone : "UTC";
  const starts = new Date(show.starts_at);
  $("show-title").textContent = info ? info.movie_title : show.movie_id;
  $("show-subtitle").textContent = [
    new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", hour: "numeric", minute: "2-digit", timeZone: st.tz }).format(starts),
    info && `${info.theatre_name}, ${info.screen_name}`, show.language, show.format,
    show.status === "cancelled" ? "CANCELLED" : "",
  ].filter(Boolean).join(" · ");
  $("show-back").href = `#/schedule/${enc(show.screen_id)}/${wallDate(starts, st.tz)}`;
  fillPrices();
  fillMove();
  cancelText();
  loadWaitingRoom();
  if (data) {
    drawMap();
    startLive();
  } else {
    $("show-map").replaceChildren(el("p", { class: "muted", text: "This show has no seat map to show." }));
    $("show-live").hidden = true;
  }
  $("show-title").focus({ preventScroll: true });
  return () => { if (st.live) st.live.stop(); st.live = null; };
}

// --- the seat map, live --------------------------------------------------------------

function drawMap() {
  const colours = {};
  st.data.categories.forEach((c, i) => { colours[c.name] = PALETTE[i % PALETTE.length]; });
  st.map = new HouseSeatMap($("show-map"), st.data, colours, pick);
  window.bmmShow = st;  // for the console and the browser tests
  const statuses = [["selected", "Picked"], ["held", "Held"], ["booked", "Sold"], ["blocked", "House seat / unavailable"]];
  $("show-legend").replaceChildren(
    el("ul", { class: "legend-cats" }, st.data.categories.map((c) => el("li", {},
      el("span", { class: "swatch", style: `--cat:${colours[c.name]}` }), el("span", { class: "cat-name", text: c.name }),
      el("span", { class: "cat-price", text: c.price ? money(c.price) : "no price" })))),
    el("ul", { class: "legend-status" }, statuses.map(([k, t]) => el("li", {}, el("span", { class: `swatch st-${k}` }), el("span", { text: t })))));
  renderPicked();
  stats();
}

function startLive() {
  $("show-live").hidden = false;
  st.live = new LiveSeats(st.id, st.data.seq, {
    onSnapshot: (seats) => { st.map.replaceAll(seats); dropLost(); stats(); },
    onChanges: (changes) => { st.map.apply(changes); dropLost(); stats(); },
    onState: (s) => {
      const badge = $("show-live");
      badge.dataset.state = s;
      badge.textContent = { live: "Live", connecting: "Connecting…", offline: "Reconnecting…" }[s];
    },
  });
  st.live.start();
}

/** Sold, occupancy (booked / sellable seats, as the reports count it), gross (the booked
 *  seats' category prices), held, free, house seats: from the live statuses. */
function stats() {
  const counts = { free: 0, held: 0, booked: 0, blocked: 0 };
  let gross = 0, currency = null;
  for (const [id, status] of st.map.status) {
    counts[status] = (counts[status] || 0) + 1;
    if (status === "booked") {
      const price = st.show.prices[st.map.seats.get(id).category];
      if (price) { gross += price.amount; currency = price.currency; }
    }
  }
  const total = st.map.seats.size;
  const sellable = total - counts.blocked;
  const occ = sellable ? counts.booked / sellable : 0;
  $("show-sold").textContent = `${counts.booked} of ${sellable}`;
  $("show-occupancy").textContent = `${(occ * 100).toFixed(1)} %`;
  $("show-gross").textContent = currency ? money({ amount: gross, currency }) : "–";
  $("show-held").textContent = String(counts.held);
  $("show-free").textContent = String(counts.free);
  $("show-blocked").textContent = String(counts.blocked);
  $("show-occupancy-bar").style.width = `${(occ * 100).toFixed(1)}%`;
  st.counts = { ...counts, gross, currency };
  document.body.dataset.showSeq = String(st.live ? st.live.seq : st.data.seq);
  cancelText();
  moveState();
}

/** A show with bookings keeps its time: its customers bought that one. */
function moveState() {
  const form = $("move-form");
  const fixed = st.show.status !== "scheduled" || (st.counts && st.counts.booked > 0);
  for (const n of form.elements) n.disabled = fixed;
  $("move-title").textContent = st.counts && st.counts.booked > 0 ? "Time (fixed: the show has bookings)" : "Time";
}

// --- house seats ---------------------------------------------------------------------

function pick(id) {
  const i = st.picked.indexOf(id);
  if (i >= 0) st.picked.splice(i, 1);
  else st.picked.push(id);
  st.map.setSelected(st.picked);
  renderPicked();
}

function dropLost() {
  const keep = st.picked.filter((id) => ["free", "blocked"].includes(st.map.status.get(id)));
  if (keep.length !== st.picked.length) {
    st.picked = keep;
    st.map.setSelected(keep);
    renderPicked();
  }
}

function renderPicked() {
  const free = st.picked.filter((id) => st.map.status.get(id) === "free");
  const blocked = st.picked.filter((id) => st.map.status.get(id) === "blocked");
  $("house-selection").textContent = st.picked.length
    ? `Picked ${st.picked.join(", ")}` : "No seats picked.";
  $("house-selection").classList.toggle("muted", !st.picked.length);
  $("house-block").disabled = !free.length;
  $("house-block").textContent = free.length ? `Block ${free.length} as house seats` : "Block as house seats";
  $("house-release").disabled = !blocked.length;
  $("house-release").textContent = blocked.length ? `Release ${blocked.length} house seats` : "Release house seats";
  $("house-clear").disabled = !st.picked.length;
}

async function houseSeats(block) {
  const seats = st.picked.filter((id) => st.map.status.get(id) === (block ? "free" : "blocked"));
  if (!seats.length) return;
  const button = block ? $("house-block") : $("house-release");
  button.disabled = true;
  try {
    const out = await send(block ? "POST" : "DELETE", `/partner/v1/shows/${enc(st.id)}/blocks`, { seats });
    st.picked = st.picked.filter((id) => !seats.includes(id));
    st.map.setSelected(st.picked);
    // The live socket brings the change too; apply it now so the page answers at once.
    st.map.apply(out.seats.map((id) => [id, block ? "blocked" : "free"]));
    stats();
    say(`${out.seats.length} seat${out.seats.length === 1 ? "" : "s"} ${block ? "kept as house seats" : "released"}: ${out.seats.join(", ") || "none changed"}.`, "ok");
  } catch (e) {
    say(e.details && e.details.seats ? `${e.message}: ${e.details.seats.join(", ")}` : e.message);
  } finally {
    renderPicked();
  }
}

$("house-block").addEventListener("click", () => houseSeats(true));
$("house-release").addEventListener("click", () => houseSeats(false));
$("house-clear").addEventListener("click", () => { st.picked = []; st.map.setSelected([]); renderPicked(); });

// --- waiting room --------------------------------------------------------------------

async function loadWaitingRoom() {
  const form = $("waiting-form");
  const noteBox = $("waiting-note");
  noteBox.hidden = true;
  form.querySelector("button[type=submit]").disabled = false;
  try {
    const room = await get(`/partner/v1/shows/${enc(st.id)}/waiting-room`);
    showRoom(room);
  } catch (e) {
    roomUnavailable(e);
  }
}

function showRoom(room) {
  const form = $("waiting-form");
  form.elements.enabled.checked = room.enabled;
  form.elements.admit_per_minute.value = room.admit_per_minute;
  $("waiting-counts").textContent = room.enabled || room.joined
    ? `${room.joined} joined, ${room.admitted} let in, ${room.waiting} waiting.` : "Off: everyone picks seats directly.";
}

function roomUnavailable(e) {
  const box = $("waiting-note");
  const unsupported = e.status === 401 || e.status === 404 || e.status === 405;
  box.textContent = unsupported
    ? `The waiting room cannot be switched from the portal on this server yet (${e.status}: ${e.message}). `
      + "An integration can, with an API key: PUT /partner/v1/shows/{id}/waiting-room."
    : e.message;
  box.dataset.kind = "info";
  box.hidden = false;
  if (unsupported) $("waiting-form").querySelector("button[type=submit]").disabled = true;
}

$("waiting-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const body = { enabled: form.elements.enabled.checked, admit_per_minute: Number(form.elements.admit_per_minute.value) || 600 };
  try {
    const room = await send("PUT", `/partner/v1/shows/${enc(st.id)}/waiting-room`, body);
    showRoom(room);
    say(room.enabled ? "Waiting room on." : "Waiting room off.", "ok");
  } catch (e) {
    roomUnavailable(e);
    say(e.message);
  }
});

// --- prices and time -------------------------------------------------------------------

function fillPrices() {
  const prices = st.show.prices;
  $("show-prices").replaceChildren(...Object.entries(prices).map(([cat, m]) => el("label", {}, `${cat} (${m.currency})`,
    el("input", { name: `price:${cat}`, required: true, inputmode: "decimal", value: fromMinor(m.amount, m.currency) }))));
  const editable = st.show.status === "scheduled";
  for (const n of $("prices-form").elements) n.disabled = !editable;
  $("show-cancel").disabled = !editable;
  moveState();
}

function fillMove() {
  const form = $("move-form");
  const starts = new Date(st.show.starts_at);
  form.elements.date.value = wallDate(starts, st.tz);
  form.elements.time.value = wallTime(starts, st.tz);
}

async function reloadShow() {
  const { data, etag } = await call(`/partner/v1/shows/${enc(st.id)}`);
  st.show = data;
  st.etag = etag;
  fillPrices();
  fillMove();
  stats();
}

$("prices-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  const prices = {};
  for (const [cat, m] of Object.entries(st.show.prices)) {
    const amount = toMinor(v[`price:${cat}`], m.currency);
    if (amount === null) { say(`Give a price for ${cat}.`); return; }
    prices[cat] = { amount, currency: m.currency };
  }
  try {
    await send("PUT", `/partner/v1/shows/${enc(st.id)}`, showBody(st.show, { prices }), st.etag);
    await reloadShow();
    say("Prices saved: they apply to holds from now on.", "ok");
  } catch (e) {
    say(e.message);
  }
});

$("move-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  try {
    await moveShow(st.show, fromWall(v.date, v.time, st.tz), st.etag);
    await reloadShow();
    say(`The show now starts ${v.date} at ${v.time}.`, "ok");
  } catch (e) {
    say(`Could not move the show: ${e.message}`);
  }
});

// --- cancelling -----------------------------------------------------------------------

function cancelText() {
  const c = st.counts;
  const box = $("cancel-what");
  if (st.show && st.show.status === "cancelled") { box.textContent = "This show is cancelled."; return; }
  if (!c) { box.textContent = "Every booking is cancelled and refunded in full; customers are told."; return; }
  box.textContent = c.booked
    ? `${c.booked} sold seat${c.booked === 1 ? "" : "s"} (${money({ amount: c.gross, currency: c.currency })}) will be refunded in full, and the customers told.`
    : "No seats are sold yet: nobody needs a refund.";
}

/** What the cancel answer says was refunded, as a sentence (whatever shape it has). */
function refundSentence(out, before) {
  const r = out && (out.refunds || out.refunded || out.refund || out.cancellation);
  if (r) {
    if (Array.isArray(r)) {
      const total = r.reduce((n, x) => n + ((x.refund || x.amount || {}).amount || 0), 0);
      const cur = (r.find((x) => x.refund || x.amount) || {}).refund?.currency || (r[0] && r[0].amount && r[0].amount.currency);
      return `Refunded ${r.length} booking${r.length === 1 ? "" : "s"}${cur ? `: ${money({ amount: total, currency: cur })}` : ""}.`;
    }
    if (r.amount !== undefined && r.currency) return `Refunded ${money(r)}${out.bookings !== undefined ? ` over ${out.bookings} bookings` : ""}.`;
    if (r.total) return `Refunded ${money(r.total)}${r.bookings !== undefined ? ` over ${r.bookings} bookings` : ""}.`;
  }
  if (out && out.cancelled_bookings !== undefined) return `Cancelled and refunded ${out.cancelled_bookings} bookings.`;
  return before && before.booked
    ? `Every booking was cancelled and refunded in full (${before.booked} seats, ${money({ amount: before.gross, currency: before.currency })}).`
    : "No seats were sold: there was nothing to refund.";
}

$("show-cancel").addEventListener("click", async () => {
  const before = st.counts && { ...st.counts };
  if (!confirm(`Cancel this show? ${$("cancel-what").textContent} This cannot be undone.`)) return;
  const button = $("show-cancel");
  button.disabled = true;
  try {
    const { data, status } = await call(`/partner/v1/shows/${enc(st.id)}`, { method: "DELETE", ifMatch: st.etag });
    const box = $("cancel-result");
    box.textContent = `Cancelled. ${refundSentence(data, before)}`;
    box.dataset.kind = "ok";
    box.hidden = false;
    st.show = data && data.show_id ? data : (data && data.show) || { ...st.show, status: "cancelled" };
    if (status === 200 || status === 201) say("The show is cancelled.", "ok");
    fillPrices();
    cancelText();
  } catch (e) {
    // 503 refunds_pending: the show is cancelled, some refunds wait; repeating finishes them.
    say(e.status === 503 ? `${e.message} (press Cancel again in a moment to finish them)` : e.message);
    button.disabled = false;
  }
});
