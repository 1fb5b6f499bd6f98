// Portal: theatres with their screens, and movies: list, create, edit, retire
// (PUT / GET / DELETE /partner/v1/{theatres,screens,movies}/{id}).
import { $, say } from "./page.js";
import { el, getOne, listAll, newId, note, putOne, retire, values } from "./portal-api.js";

// --- theatres and screens -------------------------------------------------------------

let theatreEdit = null;   // {id, etag} of the theatre in the form, null: a new one

function zoneList() {
  const list = $("timezones");
  if (list.childElementCount) return;
  const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : ["UTC"];
  list.append(...zones.map((z) => el("option", { value: z })));
}

const retired = (r) => r.status === "retired";

/** The PUT body that makes a retired record active again: the record as it is. */
function bodyOf(kind, r) {
  if (kind === "theatres") return { name: r.name, city: r.city, address: r.address, timezone: r.timezone };
  if (kind === "screens") return { theatre_id: r.theatre_id, name: r.name, layout: r.layout };
  return { title: r.title, languages: r.languages, genres: r.genres, runtime_min: r.runtime_min,
           certificate: r.certificate, synopsis: r.synopsis || "" };
}

async function reactivate(kind, id, name, button) {
  button.disabled = true;
  try {
    const { data, etag } = await getOne(kind, id);
    await putOne(kind, id, bodyOf(kind, data), etag);
    if (kind === "movies") await mountMovies(); else await mountTheatres();
    say(`"${name}" is active again.`, "ok");
  } catch (e) {
    say(e.message);
    button.disabled = false;
  }
}

function statusChip(r) {
  return retired(r) ? el("span", { class: "chip-s", text: "retired" }) : null;
}

function retireOrRestore(kind, id, name, r) {
  return retired(r)
    ? el("button", { type: "button", text: "Make active again", onclick: (ev) => reactivate(kind, id, name, ev.target) })
    : el("button", { type: "button", class: "ghost", text: "Retire", onclick: (ev) => retireItem(kind, id, name, ev.target) });
}

function seatCount(screen) {
  if (screen.layout && screen.layout.seats) return screen.layout.seats.length;
  return screen.seats ?? screen.seat_count ?? null;
}

export async function mountTheatres() {
  zoneList();
  const form = $("theatre-form");
  form.hidden = true;
  const [theatres, screens] = await Promise.all([listAll("theatres"), listAll("screens")]);
  note($("theatres-note"), theatres.degraded || screens.degraded);
  const byTheatre = new Map();
  for (const s of screens.items) {
    if (!byTheatre.has(s.theatre_id)) byTheatre.set(s.theatre_id, []);
    byTheatre.get(s.theatre_id).push(s);
  }
  const sorted = [...theatres.items].sort((a, b) => retired(a) - retired(b) || a.name.localeCompare(b.name));
  $("theatres").replaceChildren(...sorted.map((t) => theatreItem(t, byTheatre.get(t.theatre_id) || [])));
  $("no-theatres").hidden = sorted.length > 0;
  if (!sorted.length) openTheatreForm(null);
  $("theatres-title").focus({ preventScroll: true });
}

function theatreItem(t, screens) {
  screens.sort((a, b) => retired(a) - retired(b) || a.name.localeCompare(b.name, undefined, { numeric: true }));
  return el("li", { "data-theatre": t.theatre_id, class: retired(t) ? "inactive" : "" },
    el("div", { class: "item-head" },
      el("div", {},
        el("strong", { text: t.name }), " ", statusChip(t), " ",
        el("span", { class: "muted small", text: `${t.city} · ${t.timezone}` }),
        el("div", { class: "muted small mono", text: t.theatre_id })),
      el("div", { class: "row-actions" },
        retired(t) ? null : el("button", { type: "button", text: "Edit", onclick: () => openTheatreForm(t) }),
        retireOrRestore("theatres", t.theatre_id, t.name, t))),
    el("ul", { class: "screens" },
      screens.map((s) => {
        const n = seatCount(s);
        const live = !retired(s) && !retired(t);
        return el("li", { "data-screen": s.screen_id, class: retired(s) ? "inactive" : "" },
          el("span", {}, el("strong", { text: s.name }), " ", statusChip(s),
            el("span", { class: "muted small", text: n === null ? "" : ` · ${n} seats` })),
          el("span", { class: "row-actions" },
            el("a", { class: "button", href: `#/screen/${encodeURIComponent(s.screen_id)}`, text: "Seat layout" }),
            live ? el("a", { class: "button", href: `#/schedule/${encodeURIComponent(s.screen_id)}`, text: "Schedule" }) : null,
            retireOrRestore("screens", s.screen_id, s.name, s)));
      }),
      retired(t) ? null : el("li", { class: "add" },
        el("a", { class: "button", href: `#/screen/new/${encodeURIComponent(t.theatre_id)}`, text: "Add a screen" }))));
}

async function openTheatreForm(t) {
  const form = $("theatre-form");
  form.reset();
  theatreEdit = null;
  $("theatre-form-title").textContent = t ? `Edit ${t.name}` : "Add a theatre";
  if (t) {
    try {
      const { data, etag } = await getOne("theatres", t.theatre_id);
      t = data;
      theatreEdit = { id: t.theatre_id, etag };
    } catch (e) {
      say(e.message);
      return;
    }
    for (const k of ["name", "city", "address", "timezone"]) form.elements[k].value = t[k] || "";
  } else {
    form.elements.timezone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  }
  form.hidden = false;
  form.elements.name.focus();
}

$("theatre-new").addEventListener("click", () => openTheatreForm(null));
$("theatre-form").querySelector("[data-cancel]").addEventListener("click", () => {
  $("theatre-form").hidden = true;
  $("theatre-new").focus();
});
$("theatre-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const v = values(form);
  const body = { name: v.name.trim(), city: v.city.trim(), address: v.address.trim(), timezone: v.timezone.trim() };
  const id = theatreEdit ? theatreEdit.id : newId("th", body.name);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const { data } = await putOne("theatres", id, body, theatreEdit ? theatreEdit.etag : "new");
    await mountTheatres();
    say(`Theatre "${data.name}" saved.`, "ok");
    document.querySelector(`[data-theatre="${CSS.escape(id)}"] .add a`)?.focus();
  } catch (e) {
    say(e.message);
  } finally {
    button.disabled = false;
  }
});

async function retireItem(kind, id, name, button) {
  const what = kind.slice(0, -1);
  if (!confirm(`Retire the ${what} "${name}"? It disappears from your lists; shows already sold are not touched.`)) return;
  button.disabled = true;
  try {
    await retire(kind, id);
    if (kind === "movies") await mountMovies(); else await mountTheatres();
    say(`The ${what} "${name}" is retired.`, "ok");
  } catch (e) {
    // 409 in_use: the server says what still uses it (and names up to 20 shows).
    const ids = e.details && Array.isArray(e.details.show_ids) ? e.details.show_ids : [];
    say(e.code === "in_use"
      ? `Cannot retire "${name}": ${e.message}${ids.length ? ` (${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""})` : ""}.`
      : e.message);
    button.disabled = false;
  }
}

// --- movies ------------------------------------------------------------------------------

let movieEdit = null;

const list = (text) => String(text || "").split(",").map((s) => s.trim()).filter(Boolean);

export async function mountMovies() {
  $("movie-form").hidden = true;
  const movies = await listAll("movies");
  note($("movies-note"), movies.degraded);
  const sorted = [...movies.items].sort((a, b) => retired(a) - retired(b) || a.title.localeCompare(b.title));
  $("movies").replaceChildren(...sorted.map((m) => el("li", { "data-movie": m.movie_id, class: retired(m) ? "inactive" : "" },
    el("div", { class: "item-head" },
      el("div", {},
        el("strong", { text: m.title }), " ", statusChip(m), " ",
        el("span", { class: "muted small", text: `${m.runtime_min} min · ${m.certificate || "–"} · ${(m.languages || []).join(", ")}` }),
        el("div", { class: "muted small", text: (m.genres || []).join(", ") })),
      el("div", { class: "row-actions" },
        retired(m) ? null : el("button", { type: "button", text: "Edit", onclick: () => openMovieForm(m) }),
        retireOrRestore("movies", m.movie_id, m.title, m))))));
  $("no-movies").hidden = sorted.length > 0;
  if (!sorted.length) openMovieForm(null);
  $("movies-title").focus({ preventScroll: true });
}

async function openMovieForm(m) {
  const form = $("movie-form");
  form.reset();
  movieEdit = null;
  $("movie-form-title").textContent = m ? `Edit ${m.title}` : "Add a movie";
  if (m) {
    try {
      const { data, etag } = await getOne("movies", m.movie_id);
      m = data;
      movieEdit = { id: m.movie_id, etag };
    } catch (e) {
      say(e.message);
      return;
    }
    form.elements.title.value = m.title;
    form.elements.languages.value = m.languages.join(", ");
    form.elements.genres.value = m.genres.join(", ");
    form.elements.runtime_min.value = m.runtime_min;
    form.elements.certificate.value = m.certificate;
    form.elements.synopsis.value = m.synopsis || "";
  }
  form.hidden = false;
  form.elements.title.focus();
}

$("movie-new").addEventListener("click", () => openMovieForm(null));
$("movie-form").querySelector("[data-cancel]").addEventListener("click", () => {
  $("movie-form").hidden = true;
  $("movie-new").focus();
});
$("movie-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  const body = {
    title: v.title.trim(), languages: list(v.languages), genres: list(v.genres),
    runtime_min: Number(v.runtime_min), certificate: v.certificate.trim(), synopsis: v.synopsis,
  };
  const id = movieEdit ? movieEdit.id : newId("mv", body.title);
  const button = ev.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const { data } = await putOne("movies", id, body, movieEdit ? movieEdit.etag : "new");
    await mountMovies();
    say(`Movie "${data.title}" saved.`, "ok");
  } catch (e) {
    say(e.message);
  } finally {
    button.disabled = false;
  }
});
