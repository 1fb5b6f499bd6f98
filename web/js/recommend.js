// The browse page's "Recommended for you" / "Popular in <city>" strip: GET /api/recommendations
// for the chosen city and language, one row of chips per section. Picking a movie opens its
// card in the list below (when the filters show it).
import { api, dayOf, el, localTime } from "./api.js";

const $ = (id) => document.getElementById(id);
let generation = 0;

function openCard(movieId) {
  const toggle = document.querySelector(`button[aria-controls="times-${CSS.escape(movieId)}"]`);
  if (!toggle) return;
  toggle.scrollIntoView({ behavior: "smooth", block: "center" });
  if (toggle.getAttribute("aria-expanded") !== "true") toggle.click();
}

function chip(item) {
  const m = item.summary.movie;
  const when = item.summary.next_show_at;
  const tz = item.summary.next_show_timezone;
  return el("li", {},
    el("a", { class: "chip", href: `#times-${m.movie_id}`, "data-movie": m.movie_id,
              onclick: (ev) => { ev.preventDefault(); openCard(m.movie_id); } },
      el("strong", {}, m.title),
      el("span", { class: "small" }, `${item.summary.languages_showing.join(", ")} · ${dayOf(when, tz)} ${localTime(when, tz)}`)));
}

async function load() {
  const gen = ++generation;
  const box = $("recs");
  if (!box) return;
  const q = new URLSearchParams();
  const city = $("f-city")?.value;
  const language = $("f-language")?.value;
  if (city) q.set("city", city);
  if (language) q.set("language", language);
  q.set("limit", "8");
  let body;
  try {
    body = await api(`/api/recommendations?${q}`);
  } catch {
    if (gen === generation) box.hidden = true;
    return;
  }
  if (gen !== generation) return;
  const sections = body.sections.filter((s) => s.movies.length);
  box.hidden = !sections.length;
  $("recs-title").textContent = body.personalised ? "Recommended for you" : `Popular${city ? ` in ${city}` : ""}`;
  $("recs-sections").replaceChildren(...sections.map((s) =>
    el("section", { class: "rec-section", "data-kind": s.kind, "aria-label": s.title },
      el("h3", { class: "day-label" }, s.title),
      el("ul", { class: "chips" }, ...s.movies.map(chip)))));
}

function init() {
  for (const id of ["f-city", "f-language"]) $(id)?.addEventListener("change", load);
  // The city list arrives asynchronously (browse.js fills the select): load once it has one.
  const city = $("f-city");
  if (city && !city.value) {
    new MutationObserver((_, obs) => { obs.disconnect(); load(); }).observe(city, { childList: true });
  } else {
    load();
  }
}

init();
