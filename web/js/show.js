// The show page: live seat map, select / best available, hold with countdown, extend,
// release, checkout (sandbox card), confirmation with the e-ticket QR.
import { api, ApiError, dayOf, el, localTime, money, timeOf, uuid } from "./api.js";
import { LiveSeats } from "./live.js";
import { PALETTE, SeatMap } from "./seatmap.js";

const $ = (id) => document.getElementById(id);
const showId = new URLSearchParams(location.search).get("show");
const holdKey = `bmm.hold.${showId}`;

const state = {
  data: null,       // the /seatmap response
  map: null,        // SeatMap
  live: null,       // LiveSeats
  prices: {},       // category -> Money
  selected: [],     // seat ids, in the order picked
  hold: null,       // {hold_id, holder_token, seats, expires_at, quote}
  payKey: null,     // Idempotency-Key of the current checkout attempt
  ticker: null,
};
window.bmm = state; // a handle for debugging in the console (and for the browser tests)

function say(text, kind = "error") {
  const m = $("message");
  m.textContent = text;
  m.dataset.kind = kind;
  m.hidden = !text;
}

function busy(button, on) {
  button.disabled = on;
  button.setAttribute("aria-busy", on ? "true" : "false");
}

// --- loading -------------------------------------------------------------------------

async function load() {
  if (!showId) {
    $("title").textContent = "No show chosen";
    $("subtitle").replaceChildren(el("a", { href: "/" }, "Pick a movie and a show time"));
    return;
  }
  let data;
  try {
    data = await api(`/api/shows/${encodeURIComponent(showId)}/seatmap`);
  } catch (e) {
    $("title").textContent = e.status === 404 ? "This show does not exist" : "Could not load the show";
    $("subtitle").textContent = e.message;
    $("live-state").hidden = true;
    return;
  }
  state.data = data;
  const show = data.show;
  document.title = `${show.movie_title} · ${timeOf(show.starts_at, show.timezone)} · Book My Movie`;
  $("title").textContent = show.movie_title;
  $("subtitle").textContent = [
    `${dayOf(show.starts_at, show.timezone)}, ${localTime(show.starts_at, show.timezone)}`,
    show.theatre_name && `${show.theatre_name}${show.city ? ", " + show.city : ""}`,
    show.screen_name, show.language, show.format,
  ].filter(Boolean).join(" · ");

  const colours = {};
  data.categories.forEach((c, i) => {
    colours[c.name] = PALETTE[i % PALETTE.length];
    if (c.price) state.prices[c.name] = c.price;
  });
  state.colours = colours;
  state.map = new SeatMap($("seatmap"), data, colours, toggle);
  drawLegend();
  setupBest();
  restoreHold();
  renderPick();

  state.live = new LiveSeats(showId, data.seq, {
    onSnapshot: (seats) => lost(state.map.replaceAll(seats)),
    onChanges: (changes) => lost(state.map.apply(changes)),
    onState: (s) => {
      const badge = $("live-state");
      badge.dataset.state = s;
      badge.textContent = { live: "Live", connecting: "Connecting…", offline: "Reconnecting…" }[s];
    },
  });
  state.live.start();
}

function drawLegend() {
  const items = state.data.categories.map((c) =>
    el("li", {},
      el("span", { class: "swatch", style: `--cat:${state.colours[c.name]}` }),
      el("span", { class: "cat-name" }, c.name),
      el("span", { class: "cat-price" }, c.price ? money(c.price) : "not on sale")));
  const statuses = [["selected", "Selected"], ["mine", "Held for you"], ["held", "Held"],
                    ["booked", "Sold"], ["blocked", "Unavailable"]]
    .map(([k, t]) => el("li", {}, el("span", { class: `swatch st-${k}` }), el("span", {}, t)));
  $("legend").replaceChildren(el("ul", { class: "legend-cats" }, items),
                              el("ul", { class: "legend-status" }, statuses));
}

function setupBest() {
  const sel = $("best-category");
  for (const c of state.data.categories) {
    if (c.price) sel.append(el("option", { value: c.name }, `${c.name} · ${money(c.price)}`));
  }
  const max = state.data.max_seats_per_hold;
  $("best-count").max = String(max);
  $("best-form").addEventListener("submit", (ev) => { ev.preventDefault(); holdBest(); });
}

// --- picking -------------------------------------------------------------------------

function toggle(id) {
  if (state.hold) {
    say("Release or pay for the seats you hold before picking others.", "info");
    return;
  }
  const seat = state.map.seats.get(id);
  if (!state.prices[seat.category]) {
    say(`${seat.category} seats are not on sale for this show.`, "info");
    return;
  }
  const i = state.selected.indexOf(id);
  if (i >= 0) state.selected.splice(i, 1);
  else if (state.selected.length >= state.data.max_seats_per_hold) {
    say(`You can pick at most ${state.data.max_seats_per_hold} seats at a time.`, "info");
    return;
  } else state.selected.push(id);
  say("");
  state.map.setSelected(state.selected);
  renderPick();
}

function lost(ids) {
  if (!ids.length) return;
  state.selected = state.selected.filter((s) => !ids.includes(s));
  renderPick();
  say(`${ids.join(", ")} ${ids.length > 1 ? "were" : "was"} just taken by someone else.`, "info");
}

function total(seats) {
  let amount = 0, currency = null;
  for (const id of seats) {
    const p = state.prices[state.map.seats.get(id).category];
    if (!p) continue;
    amount += p.amount;
    currency = p.currency;
  }
  return currency ? { amount, currency } : null;
}

function renderPick() {
  const n = state.selected.length;
  const sum = total(state.selected);
  $("selection").textContent = n
    ? `${n} seat${n > 1 ? "s" : ""}: ${state.selected.join(", ")} · ${money(sum)}`
    : "No seats selected yet.";
  $("selection").classList.toggle("muted", !n);
  $("hold-btn").disabled = !n || !!state.hold;
  $("hold-btn").textContent = n ? `Hold ${n} seat${n > 1 ? "s" : ""}` : "Hold seats";
  $("clear-btn").disabled = !n;
  $("best-btn").disabled = !!state.hold;
}

// --- holding -------------------------------------------------------------------------

async function holdSeats() {
  await createHold({ seats: state.selected }, $("hold-btn"));
}

async function holdBest() {
  const count = Number($("best-count").value);
  if (!Number.isInteger(count) || count < 1) return say("How many seats?", "info");
  const category = $("best-category").value || null;
  await createHold({ best: { count, category } }, $("best-btn"));
}

async function createHold(body, button) {
  const code = $("promo-code").value.trim();
  const email = $("promo-email").value.trim();
  if (code) {
    body = { ...body, promo_code: code };
    if (email) body.email = email;
  }
  busy(button, true);
  say("");
  try {
    const hold = await api(`/api/shows/${encodeURIComponent(showId)}/holds`, { method: "POST", body });
    setHold(hold);
  } catch (e) {
    if (e.code === "seats_unavailable" && e.details.seats) {
      say(`Sorry, ${e.details.seats.join(", ")} ${e.details.seats.length > 1 ? "were" : "was"} just taken. Pick again.`);
      state.selected = state.selected.filter((s) => !e.details.seats.includes(s));
      state.map.setSelected(state.selected);
    } else if (e.code === "email_required") {
      $("promo-box").open = true;
      say("Enter the e-mail address you will pay with to use the promo code.", "info");
      $("promo-email").focus();
    } else if (e.code && e.code.startsWith("promo_")) {
      $("promo-box").open = true;
      say(`Promo code: ${e.message}`);
    } else if (e.code === "not_enough_seats") {
      say("Not enough seats free together in that category. Try fewer seats or another category.");
    } else {
      say(e.message);
    }
    renderPick();
  } finally {
    busy(button, false);
    renderPick();
  }
}

function setHold(hold) {
  state.hold = hold;
  state.payKey = null;
  state.selected = [];
  state.map.setSelected([]);
  state.map.setMine(hold ? hold.seats : []);
  if (hold) sessionStorage.setItem(holdKey, JSON.stringify(hold));
  else sessionStorage.removeItem(holdKey);
  renderHold();
  renderPick();
}

function restoreHold() {
  try {
    const hold = JSON.parse(sessionStorage.getItem(holdKey) || "null");
    if (hold && Date.parse(hold.expires_at) > Date.now()) setHold(hold);
    else sessionStorage.removeItem(holdKey);
  } catch { sessionStorage.removeItem(holdKey); }
}

function renderHold() {
  const hold = state.hold;
  $("hold-panel").hidden = !hold;
  $("pick-panel").hidden = !!hold;
  clearInterval(state.ticker);
  if (!hold) return;
  const amount = { amount: hold.quote.total, currency: hold.quote.currency };
  $("hold-seats").textContent = `${hold.seats.join(", ")} · ${money(amount)}`;
  $("pay-btn").textContent = `Pay ${money(amount)}`;
  renderQuote(hold.quote);
  if (hold.quote.promo_code && $("promo-email").value.trim()) {
    $("pay-email").value = $("promo-email").value.trim();  // the promo code is for this address
  }
  const tick = () => {
    const left = Math.max(0, Date.parse(state.hold.expires_at) - Date.now());
    const m = Math.floor(left / 60000), s = Math.floor((left % 60000) / 1000);
    $("countdown").textContent = `${m}:${String(s).padStart(2, "0")}`;
    $("countdown").parentElement.classList.toggle("urgent", left < 60000);
    if (left === 0) {
      clearInterval(state.ticker);
      setHold(null);
      say("Your hold ran out and the seats were released. Pick again.", "info");
    }
  };
  tick();
  state.ticker = setInterval(tick, 1000);
}

// The itemised quote: what checkout charges, fixed for as long as the seats are held.
function renderQuote(quote) {
  const m = (amount) => money({ amount, currency: quote.currency });
  const cell = (text, tag = "td") => el(tag, {}, text);
  const rows = quote.lines.map((line) => {
    const tr = el("tr", {},
      cell(`${line.seat} (${line.category})`, "th"), cell(m(line.base)),
      cell(line.discount ? `−${m(line.discount)}` : "—"), cell(m(line.fee)), cell(m(line.tax)),
      cell(m(line.total)));
    tr.title = (line.applied || []).map((a) => `${a.name}: −${m(a.amount)}`).join("\n");
    tr.firstChild.setAttribute("scope", "row");
    return tr;
  });
  $("quote-lines").replaceChildren(...rows);
  const offers = [...new Set(quote.lines.flatMap((l) => (l.applied || []).map((a) => a.name)))];
  $("quote-total").replaceChildren(
    cell(offers.length ? `Total · ${offers.join(", ")}` : "Total", "th"), cell(m(quote.base)),
    cell(quote.discount ? `−${m(quote.discount)}` : "—"), cell(m(quote.fee)), cell(m(quote.tax)),
    cell(m(quote.total)));
}

function holderHeaders() {
  return { "X-Holder-Token": state.hold.holder_token };
}

async function extend() {
  const button = $("extend-btn");
  busy(button, true);
  try {
    const view = await api(`/api/holds/${encodeURIComponent(state.hold.hold_id)}`, {
      method: "PATCH", body: { extra_seconds: 300 }, headers: holderHeaders(),
    });
    state.hold = { ...state.hold, expires_at: view.expires_at };
    sessionStorage.setItem(holdKey, JSON.stringify(state.hold));
    renderHold();
    say("Extended.", "ok");
  } catch (e) {
    holdTrouble(e);
  } finally {
    busy(button, false);
  }
}

async function release() {
  const button = $("release-btn");
  busy(button, true);
  try {
    await api(`/api/holds/${encodeURIComponent(state.hold.hold_id)}`, {
      method: "DELETE", headers: holderHeaders(),
    });
    setHold(null);
    say("Released. The seats are free for others again.", "ok");
  } catch (e) {
    holdTrouble(e);
  } finally {
    busy(button, false);
  }
}

function holdTrouble(e) {
  if (e.code === "hold_expired" || e.status === 404) {
    setHold(null);
    say("Your hold is no longer active (it ran out or was released). Pick again.", "info");
  } else {
    say(e.message);
  }
}

// --- paying --------------------------------------------------------------------------

async function pay(ev) {
  ev.preventDefault();
  const [mm, yy] = $("pay-exp").value.split("/").map((v) => Number(v.trim()));
  if (!mm || !yy) return say("Expiry should look like 12/30.", "info");
  const body = {
    card: {
      number: $("pay-card").value.replace(/[\s-]/g, ""),
      exp_month: mm, exp_year: yy < 100 ? 2000 + yy : yy,
      cvc: $("pay-cvc").value.trim(),
    },
    email: $("pay-email").value.trim(),
    name: $("pay-name").value.trim(),
  };
  // One key per attempt, kept until the attempt has a final answer: a retry after a
  // network error, a 503 or "in progress" resends it (never charged twice, and it picks
  // up where the first stopped); a new attempt after a decline gets a new one.
  state.payKey = state.payKey || uuid();
  const button = $("pay-btn");
  busy(button, true);
  say("");
  try {
    const booking = await api(`/api/holds/${encodeURIComponent(state.hold.hold_id)}/checkout`, {
      method: "POST", body, headers: { ...holderHeaders(), "Idempotency-Key": state.payKey },
    });
    confirmed(booking);
  } catch (e) {
    const unsettled = e.status === 0 || e.status >= 500 || e.code === "checkout_in_progress";
    if (!unsettled) state.payKey = null;
    if (e.code === "hold_expired") holdTrouble(e);
    else if (e.code === "hold_checked_out") say("These seats were booked already.", "info");
    else say(e.message);
  } finally {
    busy(button, false);
  }
}

function confirmed(b) {
  clearInterval(state.ticker);
  const seats = state.hold.seats;
  sessionStorage.removeItem(holdKey);
  state.hold = null;
  state.map.setMine([]);
  for (const id of seats) state.map.apply([[id, "booked"]]);
  $("hold-panel").hidden = true;
  $("pick-panel").hidden = true;
  $("done-panel").hidden = false;
  const show = b.show;
  $("ticket").replaceChildren(
    el("img", { src: b.ticket.svg_url, alt: `E-ticket QR code for booking ${b.booking_id}`, class: "qr",
                width: "200", height: "200" }),
    el("dl", {},
      el("dt", {}, "Movie"), el("dd", {}, show ? show.movie_title : ""),
      el("dt", {}, "When"), el("dd", {}, show ? `${dayOf(show.starts_at, show.timezone)}, ${localTime(show.starts_at, show.timezone)}` : ""),
      el("dt", {}, "Where"), el("dd", {}, show ? [show.theatre_name, show.screen_name].filter(Boolean).join(", ") : ""),
      el("dt", {}, "Seats"), el("dd", { id: "ticket-seats" }, b.seats.join(", ")),
      el("dt", {}, "Paid"), el("dd", {}, `${money(b.amount)} · ${b.payment.brand} •••• ${b.payment.last4}`),
      el("dt", {}, "Booking"), el("dd", { class: "mono", id: "booking-id" }, b.booking_id)),
    el("p", { class: "muted" }, `A copy goes to ${b.email}. Show the QR code at the entrance.`),
  );
  say("");
  $("done-heading").focus?.();
}

// --- wiring --------------------------------------------------------------------------

$("hold-btn").addEventListener("click", holdSeats);
$("clear-btn").addEventListener("click", () => {
  state.selected = [];
  state.map.setSelected([]);
  renderPick();
});
$("extend-btn").addEventListener("click", extend);
$("release-btn").addEventListener("click", release);
$("pay-form").addEventListener("submit", pay);

load().catch((e) => say(e instanceof ApiError ? e.message : String(e)));
