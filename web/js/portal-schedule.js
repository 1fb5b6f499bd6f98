// Portal: a week of shows on one screen, on the theatre's clock. Add shows with a repeat
// ("every day at these times for N days": one POST /partner/v1/shows:bulk, or one PUT per
// show where the bulk endpoint is missing); drag a show to move it (a PUT with the new
// start: the server refuses a clash, or a show that already has bookings, and says why).
import { $, say } from "./page.js";
import {
  addDays, call, el, enc, fromWall, getOne, isoZ, listAll, missing, note, send,
  toMinor, fromMinor, values, wallDate, wallParts, wallTime,
} from "./portal-api.js";

const PX_PER_MIN = 0.9;
const SNAP_MIN = 5;

const st = {
  screens: [], theatres: new Map(), movies: new Map(),
  screen: null, tz: "UTC", categories: [], start: null, shows: [], drag: null, portal: null,
};

function dayLabel(dateStr) {
  const [y, m, d] = dateStr.split("-").map(Number);
  return new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", timeZone: "UTC" })
    .format(new Date(Date.UTC(y, m - 1, d)));
}

function minutesOf(date, tz) {
  const p = wallParts(date, tz);
  return p.h * 60 + p.mi;
}

function hhmm(mins) {
  const m = ((mins % 1440) + 1440) % 1440;
  return `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
}

export async function mount([screenId, start], portal) {
  st.portal = portal;
  const [screens, theatres, movies] = await Promise.all([listAll("screens"), listAll("theatres"), listAll("movies")]);
  note($("schedule-note"), screens.degraded || theatres.degraded || movies.degraded);
  const active = (r) => r.status !== "retired";
  st.theatres = new Map(theatres.items.map((t) => [t.theatre_id, t]));
  st.screens = screens.items.filter((s) => active(s) && active(st.theatres.get(s.theatre_id) || {}));
  st.movies = new Map(movies.items.map((m) => [m.movie_id, m]));  // retired too: old shows' titles
  const sel = $("schedule-screen");
  sel.replaceChildren(...st.screens.map((s) => el("option", { value: s.screen_id,
    text: `${st.theatres.get(s.theatre_id)?.name || s.theatre_id} · ${s.name}` })));
  if (!st.screens.length) {
    $("week").replaceChildren(el("p", { class: "muted" }, "No screens yet. ",
      el("a", { href: "#/theatres", text: "Add a theatre and a screen first." })));
    $("add-shows").hidden = true;
    return;
  }
  $("add-shows").hidden = false;
  if (!screenId || !st.screens.some((s) => s.screen_id === screenId)) {
    screenId = st.screens[0].screen_id;
  }
  sel.value = screenId;
  let screen = st.screens.find((s) => s.screen_id === screenId);
  if (!screen.layout) screen = (await getOne("screens", screenId)).data;  // a list without layouts
  st.screen = screen;
  st.tz = st.theatres.get(screen.theatre_id)?.timezone || "UTC";
  st.categories = [...new Set((screen.layout?.seats || []).map((s) => s.category))];
  st.start = /^\d{4}-\d{2}-\d{2}$/.test(start || "") ? start : wallDate(new Date(), st.tz);
  portal.replace(`#/schedule/${enc(screenId)}/${st.start}`);
  $("schedule-title").textContent = `Schedule: ${screen.name}`;
  setupAddForm();
  await loadWeek();
  $("schedule-title").focus({ preventScroll: true });
  return () => { st.drag = null; };
}

$("schedule-screen").addEventListener("change", (ev) => {
  location.hash = `#/schedule/${enc(ev.target.value)}/${st.start || ""}`;
});
$("week-prev").addEventListener("click", () => { location.hash = `#/schedule/${enc(st.screen.screen_id)}/${addDays(st.start, -7)}`; });
$("week-next").addEventListener("click", () => { location.hash = `#/schedule/${enc(st.screen.screen_id)}/${addDays(st.start, 7)}`; });
$("week-today").addEventListener("click", () => { location.hash = `#/schedule/${enc(st.screen.screen_id)}/${wallDate(new Date(), st.tz)}`; });

// --- the week -----------------------------------------------------------------------------

/** The partner's shows on the screen in the 7 days from st.start: GET /partner/v1/shows
 *  per theatre-local date (with each show's live counts). */
async function fetchWeek() {
  const dates = [...Array(7).keys()].map((i) => addDays(st.start, i));
  const pages = await Promise.all(dates.map((d) => send("GET", `/partner/v1/shows?date=${d}`)));
  const out = [];
  for (const page of pages) {
    for (const item of page.shows || page.items || []) {
      const ps = item.show ? item : { show: item };
      if (ps.show.screen_id === st.screen.screen_id) out.push(ps);
    }
  }
  return out;
}

export async function loadWeek() {
  st.shows = await fetchWeek();
  renderWeek();
}

function renderWeek() {
  const dates = [...Array(7).keys()].map((i) => addDays(st.start, i));
  $("week-label").textContent = `${dayLabel(dates[0])} – ${dayLabel(dates[6])} (${st.tz})`;
  let from = 9 * 60, to = 24 * 60;
  for (const { show } of st.shows) {
    const s = minutesOf(new Date(show.starts_at), st.tz);
    from = Math.min(from, Math.floor(s / 60) * 60);
    const end = s + duration(show);
    to = Math.max(to, Math.min(24 * 60 + 180, Math.ceil(end / 60) * 60));
  }
  st.from = from;
  st.to = to;
  const height = (to - from) * PX_PER_MIN;
  const times = el("div", { class: "week-times", "aria-hidden": "true" }, el("div", { class: "week-dayhead" }));
  const tbody = el("div", { class: "week-body" });
  tbody.style.height = `${height}px`;
  for (let m = from; m < to; m += 60) {
    const t = el("span", { text: hhmm(m) });
    t.style.top = `${(m - from) * PX_PER_MIN}px`;
    tbody.append(t);
  }
  times.append(tbody);
  const cols = dates.map((d) => {
    const body = el("div", { class: "week-body", "data-date": d });
    body.style.height = `${height}px`;
    for (let m = from; m < to; m += 60) {
      const line = el("span", { class: "hour-line" });
      line.style.top = `${(m - from) * PX_PER_MIN}px`;
      body.append(line);
    }
    const day = st.shows.filter(({ show }) => wallDate(new Date(show.starts_at), st.tz) === d)
      .sort((a, b) => a.show.starts_at.localeCompare(b.show.starts_at));
    for (const ps of day) body.append(block(ps));
    return el("section", { class: "week-day", "aria-label": `${dayLabel(d)}: ${day.length} shows` },
      el("h4", { class: "week-dayhead", text: dayLabel(d) }), body,
      el("ul", { class: "week-daylist" }, day.map((ps) => el("li", {}, showLink(ps)))));
  });
  $("week").replaceChildren(times, ...cols);
}

function duration(show) {
  if (show.ends_at) return Math.max(15, (new Date(show.ends_at) - new Date(show.starts_at)) / 60000);
  return st.movies.get(show.movie_id)?.runtime_min || 120;
}

function describe(ps) {
  const { show } = ps;
  const title = st.movies.get(show.movie_id)?.title || show.movie_id;
  const time = wallTime(new Date(show.starts_at), st.tz);
  const av = ps.availability;
  const sold = av ? `${av.booked} of ${av.free + av.held + av.booked + av.blocked} sold` : "";
  return { title, time, sold, cancelled: show.status === "cancelled" };
}

function showLink(ps) {
  const d = describe(ps);
  return el("a", { href: `#/show/${enc(ps.show.show_id)}` },
    `${d.time} ${d.title}${d.sold ? ` · ${d.sold}` : ""}${d.cancelled ? " · cancelled" : ""}`);
}

function block(ps) {
  const { show } = ps;
  const d = describe(ps);
  const start = minutesOf(new Date(show.starts_at), st.tz);
  const a = el("a", {
    class: `show-block${d.cancelled ? " cancelled" : ""}`, href: `#/show/${enc(show.show_id)}`,
    "data-show": show.show_id, draggable: "false",
    "aria-label": `${d.title}, ${d.time}${d.sold ? `, ${d.sold}` : ""}${d.cancelled ? ", cancelled" : ""}`,
  },
  el("span", { class: "time", text: `${d.time}–${hhmm(start + duration(show))}` }),
  el("strong", { text: d.title }),
  el("span", { class: "small", text: d.cancelled ? "cancelled" : d.sold }));
  a.style.top = `${(start - st.from) * PX_PER_MIN}px`;
  a.style.height = `${Math.max(28, duration(show) * PX_PER_MIN - 2)}px`;
  const sold = ps.availability ? ps.availability.booked : 0;
  if (!d.cancelled && sold) {
    // A show with bookings stays where its customers expect it (the server refuses too).
    a.classList.add("fixed");
    a.title = "This show has bookings: it cannot be moved.";
  } else if (!d.cancelled) {
    a.addEventListener("pointerdown", (ev) => dragStart(ev, a, ps));
    a.addEventListener("click", (ev) => { if (a.dataset.dragged) { ev.preventDefault(); delete a.dataset.dragged; } });
  }
  return a;
}

// --- dragging a show -------------------------------------------------------------------

function dragStart(ev, node, ps) {
  if (ev.button !== 0) return;
  const rect = node.getBoundingClientRect();
  st.drag = { node, ps, x: ev.clientX, y: ev.clientY, grab: ev.clientY - rect.top, moved: false,
              home: node.parentElement, top: node.style.top, target: null };
  node.setPointerCapture(ev.pointerId);
  node.addEventListener("pointermove", dragMove);
  node.addEventListener("pointerup", dragEnd, { once: true });
  node.addEventListener("pointercancel", dragEnd, { once: true });
}

function dragMove(ev) {
  const d = st.drag;
  if (!d) return;
  if (!d.moved && Math.hypot(ev.clientX - d.x, ev.clientY - d.y) < 6) return;
  d.moved = true;
  d.node.classList.add("dragging");
  const bodies = [...$("week").querySelectorAll(".week-day .week-body")];
  const body = bodies.find((b) => { const r = b.getBoundingClientRect(); return ev.clientX >= r.left && ev.clientX < r.right; });
  if (!body) return;
  const r = body.getBoundingClientRect();
  let mins = st.from + (ev.clientY - r.top - d.grab) / PX_PER_MIN;
  mins = Math.max(0, Math.min(24 * 60 - SNAP_MIN, Math.round(mins / SNAP_MIN) * SNAP_MIN));
  if (d.node.parentElement !== body) body.append(d.node);
  d.node.style.top = `${(mins - st.from) * PX_PER_MIN}px`;
  d.node.querySelector(".time").textContent = `${hhmm(mins)} → drop to move`;
  d.target = { date: body.dataset.date, time: hhmm(mins) };
}

async function dragEnd(ev) {
  const d = st.drag;
  st.drag = null;
  if (!d) return;
  d.node.removeEventListener("pointermove", dragMove);
  if (d.node.hasPointerCapture(ev.pointerId)) d.node.releasePointerCapture(ev.pointerId);
  d.node.classList.remove("dragging");
  if (!d.moved) return;
  d.node.dataset.dragged = "1";  // the click that follows is not "open the show"
  const old = d.ps.show;
  if (!d.target || ev.type === "pointercancel"
      || (d.target.date === wallDate(new Date(old.starts_at), st.tz) && d.target.time === wallTime(new Date(old.starts_at), st.tz))) {
    renderWeek();
    return;
  }
  const starts = fromWall(d.target.date, d.target.time, st.tz);
  try {
    await moveShow(old, starts);
    await loadWeek();
    say(`Moved to ${dayLabel(d.target.date)} ${d.target.time}.`, "ok");
  } catch (e) {
    say(`Could not move the show: ${e.message}`);
    renderWeek();
  }
}

/** PUT the show as it is with a new start (If-Match `etag` when it was read with one). */
export async function moveShow(show, starts, etag) {
  return send("PUT", `/partner/v1/shows/${enc(show.show_id)}`, showBody(show, { starts_at: isoZ(starts) }), etag);
}

/** A show's PUT body (ShowIn) from its record, with changes. */
export function showBody(show, over = {}) {
  const body = {
    movie_id: show.movie_id, screen_id: show.screen_id, starts_at: show.starts_at,
    language: show.language, format: show.format, prices: show.prices,
  };
  if (show.hold_policy) body.hold_policy = show.hold_policy;
  return { ...body, ...over };
}

// --- adding shows with a repeat --------------------------------------------------------

function setupAddForm() {
  const form = $("add-shows");
  const movies = [...st.movies.values()].filter((m) => m.status !== "retired")
    .sort((a, b) => a.title.localeCompare(b.title));
  const msel = form.elements.movie_id;
  const keep = msel.value;
  msel.replaceChildren(...movies.map((m) => el("option", { value: m.movie_id, text: m.title })));
  if (keep && st.movies.has(keep)) msel.value = keep;
  if (!movies.length) {
    msel.append(el("option", { value: "", text: "No movies yet: add one under Movies" }));
  }
  languages();
  form.elements.first_day.value = st.start < wallDate(new Date(), st.tz) ? wallDate(new Date(), st.tz) : st.start;
  // Prices: one per seat category of the screen, prefilled from a show this week.
  const known = st.shows.find(({ show }) => show.prices && Object.keys(show.prices).length)?.show.prices || {};
  const currency = Object.values(known)[0]?.currency || form.elements.currency.value || "INR";
  form.elements.currency.value = currency;
  $("add-prices").replaceChildren(...st.categories.map((c) => el("label", {}, `${c}`,
    el("input", { name: `price:${c}`, required: true, inputmode: "decimal", placeholder: "250",
      value: known[c] ? fromMinor(known[c].amount, known[c].currency) : "" }))));
  $("add-results").replaceChildren();
  previewAdd();
}

function languages() {
  const form = $("add-shows");
  const m = st.movies.get(form.elements.movie_id.value);
  const lsel = form.elements.language;
  lsel.replaceChildren(...(m ? m.languages : []).map((l) => el("option", { value: l, text: l })));
}

function plan() {
  const form = $("add-shows");
  const v = values(form);
  const times = String(v.times || "").split(",").map((t) => t.trim()).filter(Boolean)
    .map((t) => t.replace(/^(\d):/, "0$1:"));
  const bad = times.filter((t) => !/^([01]\d|2[0-3]):[0-5]\d$/.test(t));
  const days = Math.max(1, Math.min(60, Number(v.days) || 1));
  return { v, times, bad, days };
}

function previewAdd() {
  const { v, times, bad, days } = plan();
  const out = $("add-preview");
  if (bad.length) { out.textContent = `Not a time: ${bad.join(", ")} (use HH:MM).`; return; }
  if (!times.length || !v.first_day) { out.textContent = ""; return; }
  out.textContent = `${days} day${days > 1 ? "s" : ""} × ${times.length} time${times.length > 1 ? "s" : ""} = `
    + `${days * times.length} shows, ${dayLabel(v.first_day)} to ${dayLabel(addDays(v.first_day, days - 1))}, at ${times.join(", ")}.`;
}

$("add-shows").addEventListener("input", previewAdd);
$("add-shows").elements.movie_id.addEventListener("change", languages);

function newShowId(date, time) {
  const tail = Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `sh-${date.replaceAll("-", "")}-${time.replace(":", "")}-${tail}`;
}

$("add-shows").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const { v, times, bad, days } = plan();
  if (bad.length || !times.length) { say("Give the show times as HH:MM, separated by commas."); return; }
  if (!v.movie_id) { say("Add a movie first (Movies)."); return; }
  const currency = v.currency.trim().toUpperCase();
  const prices = {};
  for (const c of st.categories) {
    const amount = toMinor(v[`price:${c}`], currency);
    if (amount === null) { say(`Give a price for ${c}.`); return; }
    prices[c] = { amount, currency };
  }
  const shows = [];
  for (let i = 0; i < days; i++) {
    const date = addDays(v.first_day, i);
    for (const t of times) {
      shows.push({ show_id: newShowId(date, t), movie_id: v.movie_id, screen_id: st.screen.screen_id,
        starts_at: isoZ(fromWall(date, t, st.tz)), language: v.language, format: v.format.trim(), prices,
        _label: `${dayLabel(date)} ${t}` });
    }
  }
  const button = ev.target.querySelector("button[type=submit]");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const results = await publish(shows);
    const failed = results.filter((r) => r.error);
    const made = results.length - failed.length;
    // Show the week the new shows start in.
    if (v.first_day < st.start || v.first_day >= addDays(st.start, 7)) {
      st.start = v.first_day;  // in place: a hash change would start the view afresh
      st.portal.replace(`#/schedule/${enc(st.screen.screen_id)}/${st.start}`);
    }
    await loadWeek();
    $("add-results").replaceChildren(...failed.map((r) => el("li", { class: "failed" },
      el("strong", { text: r.label }), `: ${r.error.message}${clashWith(r.error.message)}`)));
    say(failed.length ? `${made} shows added; ${failed.length} refused (reasons below).`
      : `${made} shows added.`, failed.length ? "info" : "ok");
  } catch (e) {
    say(e.message);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
});

/** " (it clashes with 10:00 Monsoon Song, Sun 6 Dec)" when the server's reason names a
 *  show of this week. */
function clashWith(reason) {
  const m = /already has show '([^']+)'/.exec(reason || "");
  const ps = m && st.shows.find(({ show }) => show.show_id === m[1]);
  if (!ps) return "";
  const d = describe(ps);
  return ` (that is ${d.title} at ${d.time}, ${dayLabel(wallDate(new Date(ps.show.starts_at), st.tz))})`;
}

/** Create the shows: POST /partner/v1/shows:bulk (500 at most per call), or one PUT each
 *  where the server has no bulk endpoint. [{label, error?}] in order. */
async function publish(shows) {
  const labels = new Map(shows.map((s) => [s.show_id, s._label]));
  const items = shows.map(({ _label, ...s }) => s);
  const out = [];
  try {
    for (let i = 0; i < items.length; i += 500) {
      const { data } = await call("/partner/v1/shows:bulk", { method: "POST", body: { shows: items.slice(i, i + 500) } });
      for (const r of data.results) out.push({ label: labels.get(r.show_id), error: r.error || null });
    }
    return out;
  } catch (e) {
    if (!missing(e) || out.length) throw e;
  }
  for (const { show_id: id, ...body } of items) {
    try {
      await send("PUT", `/partner/v1/shows/${enc(id)}`, body);
      out.push({ label: labels.get(id), error: null });
    } catch (e) {
      out.push({ label: labels.get(id), error: { code: e.code, message: e.message } });
    }
  }
  return out;
}
