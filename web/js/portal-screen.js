// Portal: one screen - its name, theatre and seat layout (the layout editor), a preview
// drawn by the customers' own seat map, and saving with PUT /partner/v1/screens/{id}
// (If-Match when it was read with an ETag). The server's validation errors are shown on
// the seats they name.
import { $, say } from "./page.js";
import { LayoutEditor } from "./layout-editor.js";
import { PALETTE, SeatMap } from "./seatmap.js";
import { el, getOne, listAll, newId, putOne, values } from "./portal-api.js";

let editor = null;
const state = { id: null, etag: null, isNew: true, dirty: false, timer: null, portal: null };

function editorInstance() {
  if (!editor) {
    editor = new LayoutEditor($("layout-editor"), { onChange: changed });
    window.bmmLayout = editor;  // for the console and the browser tests
  }
  return editor;
}

// Up to this many seats the preview follows every edit; above, drawing it (the customers'
// renderer, a node and listeners per seat) would stall editing, so it waits for a click.
const LIVE_PREVIEW_SEATS = 1500;

function changed() {
  state.dirty = true;
  $("screen-dirty").hidden = false;
  clearTimeout(state.timer);
  if (editor.counts().seats <= LIVE_PREVIEW_SEATS) state.timer = setTimeout(preview, 350);
  else $("preview-stale").hidden = false;
}

function markSaved() {
  state.dirty = false;
  $("screen-dirty").hidden = true;
}

export async function mount([idOrNew, theatreId], portal) {
  const ed = editorInstance();
  state.portal = portal;
  const form = $("screen-form");
  form.reset();
  state.id = null;
  state.etag = null;
  state.isNew = !idOrNew || idOrNew === "new";
  ed.clearErrors();

  const theatres = await listAll("theatres");
  const select = form.elements.theatre_id;
  select.replaceChildren(...theatres.items.filter((t) => t.status !== "retired")
    .map((t) => el("option", { value: t.theatre_id, text: `${t.name} (${t.city})` })));

  if (state.isNew) {
    $("screen-title").textContent = "New screen";
    if (theatreId) select.value = theatreId;
    if (!theatres.items.length) say("Add a theatre first: a screen belongs to one.", "info");
    const g = $("grid-form").elements;
    ed.reset(Number(g.rows.value) || 12, Number(g.per_row.value) || 18, ["Standard"]);
    $("screen-schedule").hidden = true;
  } else {
    const { data, etag } = await getOne("screens", idOrNew);
    state.id = data.screen_id;
    state.etag = etag;
    $("screen-title").textContent = `Screen: ${data.name}`;
    form.elements.name.value = data.name;
    if (![...select.options].some((o) => o.value === data.theatre_id)) {
      select.append(el("option", { value: data.theatre_id, text: data.theatre_id }));
    }
    select.value = data.theatre_id;
    ed.load(data.layout, screenSide(data.screen_id));
    const g = $("grid-form").elements;
    g.rows.value = ed.rows;
    g.per_row.value = ed.cols;
    showScheduleLink();
  }
  markSaved();
  preview();
  $("screen-title").focus({ preventScroll: true });
  return { cleanup: () => clearTimeout(state.timer), dirty: () => state.dirty };
}

// Where the partner draws the screen (the layout itself only knows "rows from the screen"):
// remembered in this browser, per screen.
function screenSide(id, side) {
  const key = `bmm.portal.screen-side.${id}`;
  try {
    if (side) localStorage.setItem(key, side);
    return localStorage.getItem(key) || "top";
  } catch {
    return side || "top";
  }
}

function showScheduleLink() {
  const link = $("screen-schedule");
  link.href = `#/schedule/${encodeURIComponent(state.id)}`;
  link.hidden = false;
}

// --- the grid form: start again, or resize --------------------------------------------

$("grid-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  const ed = editorInstance();
  if ((state.dirty || !state.isNew)
      && !confirm(`Start again with ${v.rows} rows of ${v.per_row} seats? The current layout is replaced.`)) return;
  ed.reset(Number(v.rows), Number(v.per_row), ed.categories);
  changed();
  ed.grid.focus();
});

$("grid-resize").addEventListener("click", () => {
  const v = values($("grid-form"));
  editorInstance().resize(Number(v.rows), Number(v.per_row));
});

// --- the preview: the customers' renderer ---------------------------------------------

function preview() {
  if (!editor || !$("preview-box").open) return;
  $("preview-stale").hidden = true;
  const { layout } = editor.toLayout();
  const box = $("layout-preview");
  if (!layout.seats.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No seats yet." }));
    $("preview-legend").replaceChildren();
    return;
  }
  const colours = {};
  editor.categories.forEach((c, i) => { colours[c] = PALETTE[i % PALETTE.length]; });
  const data = {
    seats: layout.seats.map((s) => ({
      id: s.id, row: s.row, number: s.number, category: s.category, x: s.x, y: s.y,
      flags: ["accessible", "companion", "blocked"].filter((f) => s[f]),
      status: s.blocked ? "blocked" : "free",
    })),
  };
  new SeatMap(box, data, colours, () => {});
  $("preview-legend").replaceChildren(el("ul", { class: "legend-cats" },
    editor.categories.map((c) => el("li", {},
      el("span", { class: "swatch", style: `--cat:${colours[c]}` }), el("span", { text: c })))));
}

$("preview-box").addEventListener("toggle", () => preview());
$("preview-refresh").addEventListener("click", () => preview());

// --- saving -------------------------------------------------------------------------

/** The server's 422 as [{message, places}]: the seats it names (by id, by x/y, or by the
 *  index in the seats list of a schema error), or none. */
export function placesOf(error, layout, places) {
  const d = error.details || {};
  const msg = error.message || "";
  const ids = new Set([d.seat, d.seat_id, ...(Array.isArray(d.seats) ? d.seats : [])].filter(Boolean));
  for (const m of msg.matchAll(/seat(?: id)? ['"]([^'"]+)['"]/g)) ids.add(m[1]);
  const found = [];
  layout.seats.forEach((s, k) => { if (ids.has(s.id)) found.push(places[k]); });
  const xy = msg.match(/x=(-?\d+),\s*y=(-?\d+)/) || (d.x !== undefined && d.y !== undefined ? [0, d.x, d.y] : null);
  if (xy) layout.seats.forEach((s, k) => { if (s.x === Number(xy[1]) && s.y === Number(xy[2])) found.push(places[k]); });
  const at = msg.match(/seats\[(\d+)\]/);
  if (at && places[Number(at[1])] !== undefined) found.push(places[Number(at[1])]);
  return [...new Set(found)];
}

$("screen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const ed = editorInstance();
  const v = values(ev.target);
  const problems = ed.check();
  if (problems.length) {
    ed.showErrors(problems);
    say(problems[0].message);
    return;
  }
  ed.clearErrors();
  const { layout, places } = ed.toLayout();
  const body = { theatre_id: v.theatre_id, name: v.name.trim(), layout };
  const id = state.id || newId("sc", body.name);
  const button = $("screen-save");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const { data, etag } = await putOne("screens", id, body, state.id ? state.etag : "new");
    state.id = data.screen_id;
    state.etag = etag;
    state.isNew = false;
    screenSide(data.screen_id, ed.screen);
    markSaved();
    $("screen-title").textContent = `Screen: ${data.name}`;
    state.portal.replace(`#/screen/${encodeURIComponent(data.screen_id)}`);
    showScheduleLink();
    say(`Screen "${data.name}" saved: ${layout.seats.length} seats.`, "ok");
  } catch (e) {
    const where = e.status === 422 ? placesOf(e, layout, places) : [];
    ed.showErrors([{ message: e.message, places: where }]);
    say(where.length ? `${e.message} (marked on the layout)` : e.message);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
});
