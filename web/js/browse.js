// Browse: city / date / language / genre filters -> movies -> a movie's theatres and times.
// With search text or a sort picked, the list comes from /api/search (same cards; each hit
// carries its theatres and times, so opening one needs no further request).
import { api, dayOf, el, isoDate, localTime, money, timeOf, zoneLabel } from "./api.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const f = { city: $("f-city"), date: $("f-date"), language: $("f-language"), genre: $("f-genre"),
            q: $("f-q"), sort: $("f-sort") };
let generation = 0; // drops answers to requests that a newer filter change replaced

function query(obj) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function filters() {
  return { city: f.city.value, date: f.date.value, language: f.language.value, genre: f.genre.value,
           q: f.q.value.trim(), sort: f.sort.value };
}

function fillSelect(select, values, keep) {
  const current = keep ?? select.value;
  select.replaceChildren(el("option", { value: "" }, "Any"),
    ...values.map((v) => el("option", { value: v }, v)));
  select.value = values.includes(current) ? current : "";
}

async function init() {
  const { cities } = await api("/api/cities");
  if (!cities.length) {
    $("status").textContent = "No theatres yet. Start the server with demo data, or publish some through the partner feed.";
    return;
  }
  f.city.replaceChildren(...cities.map((c) => el("option", { value: c.name }, c.name)));
  const wanted = params.get("city");
  f.city.value = cities.some((c) => c.name === wanted) ? wanted : cities[0].name;

  const today = new Date();
  const days = [el("option", { value: "" }, "Next 7 days")];
  for (let i = 0; i < 7; i++) {
    const d = new Date(today.getFullYear(), today.getMonth(), today.getDate() + i);
    const label = i === 0 ? "Today" : i === 1 ? "Tomorrow" : d.toLocaleDateString(undefined, { weekday: "short", day: "numeric", month: "short" });
    days.push(el("option", { value: isoDate(d) }, label));
  }
  f.date.replaceChildren(...days);
  f.date.value = params.get("date") || "";

  f.q.value = params.get("q") || "";
  f.sort.value = [...f.sort.options].some((o) => o.value === params.get("sort")) ? params.get("sort") : "";
  for (const s of Object.values(f)) if (s !== f.q) s.addEventListener("change", refresh);
  let typing; // the search box refreshes as one types (not on blur, which would redraw the list)
  f.q.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refresh, 250); });
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); clearTimeout(typing); refresh(); });
  await refresh(null, { language: params.get("language") || "", genre: params.get("genre") || "" });
}

async function refresh(_ev, initial) {
  const gen = ++generation;
  const { city, date } = filters();
  $("status").textContent = "Loading…";
  // Options for language and genre: what is on in this city on this date.
  const all = await api(`/api/movies${query({ city, date })}`);
  if (gen !== generation) return;
  const langs = [...new Set(all.movies.flatMap((m) => m.languages_showing))].sort();
  const genres = [...new Set(all.movies.flatMap((m) => m.movie.genres))].sort();
  fillSelect(f.language, langs, initial?.language);
  fillSelect(f.genre, genres, initial?.genre);

  const fl = filters();
  history.replaceState(null, "", query(fl) || location.pathname);
  if (fl.q || fl.sort) {
    const found = await api(`/api/search${query({ ...fl, per_page: 50 })}`);
    if (gen !== generation) return;
    render(found.results, fl, found.total);
    return;
  }
  const { q: _q, sort: _s, ...plain } = fl;
  const list = fl.language || fl.genre ? await api(`/api/movies${query(plain)}`) : all;
  if (gen !== generation) return;
  render(list.movies, fl);
}

function render(movies, fl, total = movies.length) {
  const matching = fl.q ? ` matching “${fl.q}”` : "";
  $("status").textContent = movies.length
    ? `${total} movie${total > 1 ? "s" : ""}${matching} in ${fl.city}`
    : `Nothing${matching} matches these filters. Try another date or fewer filters.`;
  $("movies").replaceChildren(...movies.map((m) => movieCard(m, fl)));
}

function movieCard(summary, fl) {
  const m = summary.movie;
  const panelId = `times-${m.movie_id}`;
  const toggle = el("button", { class: "primary", "aria-expanded": "false", "aria-controls": panelId },
                    "Show times");
  const panel = el("div", { id: panelId, class: "times", hidden: true });
  toggle.addEventListener("click", async () => {
    const open = toggle.getAttribute("aria-expanded") === "true";
    toggle.setAttribute("aria-expanded", String(!open));
    toggle.textContent = open ? "Show times" : "Hide times";
    panel.hidden = open;
    if (!open && !panel.dataset.loaded && summary.theatres) {  // a search hit brings its times
      renderTimes(panel, summary.theatres);
      panel.dataset.loaded = "1";
    }
    if (!open && !panel.dataset.loaded) {
      panel.textContent = "Loading…";
      try {
        const data = await api(`/api/movies/${encodeURIComponent(m.movie_id)}/shows${query({ city: fl.city, date: fl.date, language: fl.language })}`);
        renderTimes(panel, data.theatres);
        panel.dataset.loaded = "1";
      } catch (e) {
        panel.textContent = e.message;
      }
    }
  });
  return el("li", { class: "movie card" },
    el("div", { class: "poster", "aria-hidden": "true", style: `--hue:${hue(m.title)}` }, m.title.slice(0, 1)),
    el("div", { class: "movie-body" },
      el("h2", {}, m.title, " ", el("span", { class: "cert", title: "Certificate" }, m.certificate)),
      summary.rating && summary.rating.count
        ? el("p", { class: "rating small", title: "Average customer rating" },
          `★ ${summary.rating.average.toFixed(1)} · ${summary.rating.count} review${summary.rating.count > 1 ? "s" : ""}`)
        : null,
      el("p", { class: "muted" }, [`${Math.floor(m.runtime_min / 60)}h ${m.runtime_min % 60}m`,
        m.genres.join(", "), summary.languages_showing.join(" · ")].filter(Boolean).join(" · ")),
      m.synopsis ? el("p", { class: "synopsis" }, m.synopsis) : null,
      el("p", { class: "muted small" },
        `${summary.show_count} show${summary.show_count > 1 ? "s" : ""} · next ${dayOf(summary.next_show_at, summary.next_show_timezone)}, ${localTime(summary.next_show_at, summary.next_show_timezone)}`),
      toggle, panel));
}

function renderTimes(panel, theatres) {
  // The language filter is applied by the server (`language=`); times are theatre-local.
  const blocks = theatres.map((t) => {
    const shows = t.shows;
    if (!shows.length) return null;
    const tz = t.timezone;
    const label = zoneLabel(shows[0].starts_at, tz);
    const byDay = new Map();
    for (const s of shows) {
      const d = dayOf(s.starts_at, tz);
      if (!byDay.has(d)) byDay.set(d, []);
      byDay.get(d).push(s);
    }
    return el("section", { class: "theatre" },
      el("h3", {}, t.name),
      el("p", { class: "muted small" }, t.address,
        label ? el("span", { class: "tz-note", title: tz }, ` · times in ${label} (theatre time)`) : null),
      [...byDay].map(([day, list]) => el("div", { class: "day" },
        el("span", { class: "day-label" }, day),
        el("ul", { class: "chips" }, list.map((s) => el("li", {},
          el("a", {
            class: "chip", href: `/static/show.html?show=${encodeURIComponent(s.show_id)}`,
            "aria-label": `${t.name}, ${day} ${localTime(s.starts_at, tz)}, ${s.language} ${s.format}, ${s.screen_name}, from ${money(s.price_from)}`,
          },
          el("strong", {}, timeOf(s.starts_at, tz)),
          el("span", { class: "small" }, `${s.language} · ${s.format}`),
          el("span", { class: "small muted" }, `${money(s.price_from)}–${money(s.price_to)}`))))))));
  }).filter(Boolean);
  panel.replaceChildren(...(blocks.length ? blocks : [el("p", { class: "muted" }, "No show times for these filters.")]));
}

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

init().catch((e) => { $("status").textContent = `Could not load: ${e.message}`; });
