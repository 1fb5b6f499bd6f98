// The seat layout editor of the partner portal: a grid of rows x places, each place a seat
// or a gap (aisles are gaps), painted with categories, wheelchair spaces and companion
// seats; rows named automatically from the screen (A nearest it) or renamed; the screen at
// the top or the bottom; the best-seat focus point. It produces the API's layout
// (`ScreenIn.layout`: seats with id/row/number/category/x/y and flags, focal_x/focal_y) and
// reads one back.
//
// Built to stay quick with thousands of seats: one SVG, one <rect> per place, listeners on
// the SVG only (the place under the pointer is computed from its coordinates), and an edit
// repaints only the places it touched.
//
// Mouse: click or drag with the chosen tool; click a column number or a row name to apply
// the tool to the whole column or row. Keyboard (focus the grid with Tab): arrow keys move
// the cursor (up from the first row reaches the column numbers, left from the first place
// the row names), Space toggles seat / gap, 1-9 paint the category, W wheelchair, C
// companion, F puts the focus point here, R renames the row, Shift+arrow paints with the
// current tool while moving, Ctrl+Z (or U) undoes.

import { PALETTE } from "./seatmap.js";

const NS = "http://www.w3.org/2000/svg";
const SEAT = 0.82;
const OFF = (1 - SEAT) / 2;
const HEAD = 1.6;       // room for row names left and right
export const MAX_SEATS = 5000;
export const MAX_SIDE = 100;

const TOOLS = [
  ["seat", "Seat / gap", "Space"],
  ["paint", "Category", "1-9"],
  ["wheelchair", "Wheelchair", "W"],
  ["companion", "Companion", "C"],
  ["focus", "Focus point", "F"],
];

function svg(tag, attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

/** "A", "B", ..., "Z", "AA", ... for index 0, 1, ... */
export function letters(index) {
  let name = "";
  index += 1;
  while (index) {
    const rem = (index - 1) % 26;
    name = String.fromCharCode(65 + rem) + name;
    index = Math.floor((index - 1) / 26);
  }
  return name;
}

/** A seat id from its row name and number: "C12"; "R1-2" where the name ends in a digit. */
export function seatId(row, number) {
  return /\d$/.test(row) ? `${row}-${number}` : `${row}${number}`;
}

export class LayoutEditor {
  /**
   * @param root element to build the editor in
   * @param opts.onChange () => void, after every edit
   */
  constructor(root, { onChange } = {}) {
    this.root = root;
    this.onChange = onChange || (() => {});
    this.tool = "seat";
    this.catIndex = 0;
    this.undoStack = [];
    this.errors = new Map();   // place index -> message
    this.stroke = null;
    this.build();
    this.reset(8, 12, ["Standard"]);
  }

  // --- the model ----------------------------------------------------------------------

  /** A fresh rows x perRow grid, every place a seat of the first category. */
  reset(rows, perRow, categories = this.categories) {
    rows = Math.max(1, Math.min(MAX_SIDE, rows | 0));
    perRow = Math.max(1, Math.min(MAX_SIDE, perRow | 0));
    this.rows = rows;
    this.cols = perRow;
    this.categories = categories.length ? [...categories] : ["Standard"];
    this.catIndex = 0;
    this.cells = Array.from({ length: rows * perRow }, () => this.newSeat());
    this.rowNames = Array(rows).fill(null);   // null: named automatically
    this.screen = "top";
    this.numbering = "ltr";
    this.focal = null;                        // null: automatic; else {c, r} in places
    this.cursor = { r: 0, c: 0 };
    this.undoStack = [];
    this.errors.clear();
    this.syncControls();
    this.render();
  }

  newSeat(category = this.categories[this.catIndex] || this.categories[0]) {
    return { cat: category, acc: false, comp: false, blocked: false };
  }

  /** Change the grid's size, keeping what fits (new places are seats). */
  resize(rows, perRow) {
    rows = Math.max(1, Math.min(MAX_SIDE, rows | 0));
    perRow = Math.max(1, Math.min(MAX_SIDE, perRow | 0));
    this.snapshot();
    const cells = [];
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < perRow; c++) {
        cells.push(r < this.rows && c < this.cols ? this.cells[r * this.cols + c] : this.newSeat());
      }
    }
    this.rowNames = Array.from({ length: rows }, (_, r) => this.rowNames[r] ?? null);
    this.rows = rows;
    this.cols = perRow;
    this.cells = cells;
    this.cursor = { r: Math.min(this.cursor.r, rows - 1), c: Math.min(this.cursor.c, perRow - 1) };
    this.errors.clear();
    this.render();
    this.changed();
  }

  /** Load an API layout ({seats, focal_x, focal_y}). The API's y grows away from the
   *  screen; `screen` says where to draw the screen ("top" or "bottom"). */
  load(layout, screen = "top") {
    const seats = layout.seats || [];
    if (!seats.length) { this.reset(8, 12); return; }
    const xs = seats.map((s) => s.x), ys = seats.map((s) => s.y);
    const minX = Math.min(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
    const cols = Math.min(MAX_SIDE, Math.max(...xs) - minX + 1);
    const rows = Math.min(MAX_SIDE, Math.max(...ys) - minY + 1);
    const cats = [];
    for (const s of seats) if (!cats.includes(s.category)) cats.push(s.category);
    this.rows = rows;
    this.cols = cols;
    this.categories = cats;
    this.catIndex = 0;
    this.cells = Array(rows * cols).fill(null);
    this.rowNames = Array(rows).fill(null);
    this.screen = screen === "bottom" ? "bottom" : "top";
    const bottom = this.screen === "bottom";
    let rtl = 0, ltr = 0;
    const byRow = new Map();
    for (const s of seats) {
      const r = bottom ? maxY - s.y : s.y - minY, c = s.x - minX;
      if (r >= rows || c >= cols) continue;
      const flags = s.flags || [];
      this.cells[r * cols + c] = {
        cat: s.category, acc: !!(s.accessible || flags.includes("accessible")),
        comp: !!(s.companion || flags.includes("companion")),
        blocked: !!(s.blocked || flags.includes("blocked")),
      };
      this.rowNames[r] = s.row;
      if (!byRow.has(r)) byRow.set(r, []);
      byRow.get(r).push(s);
    }
    for (const list of byRow.values()) {
      list.sort((a, b) => a.x - b.x);
      if (list.length > 1) (list[0].number > list[list.length - 1].number ? rtl++ : ltr++);
    }
    this.numbering = rtl > ltr ? "rtl" : "ltr";
    // A name equal to the automatic one stays automatic (it follows the screen).
    const auto = this.autoNames();
    this.rowNames = this.rowNames.map((n, r) => (n === auto[r] ? null : n));
    // Places are drawn from x to x+1: the API's point x is the middle of place x.
    const fx = layout.focal_x - minX + 0.5;
    const fy = bottom ? maxY - layout.focal_y + 0.5 : layout.focal_y - minY + 0.5;
    const a = this.autoFocal();
    this.focal = Number.isFinite(fx) && (Math.abs(fx - a.c) > 0.01 || Math.abs(fy - a.r) > 0.01)
      ? { c: fx, r: fy } : null;
    this.cursor = { r: 0, c: 0 };
    this.undoStack = [];
    this.errors.clear();
    this.syncControls();
    this.render();
  }

  cell(r, c) { return this.cells[r * this.cols + c]; }

  rowHasSeats(r) {
    for (let c = 0; c < this.cols; c++) if (this.cells[r * this.cols + c]) return true;
    return false;
  }

  /** Rows from the screen outwards (grid indexes). */
  fromScreen() {
    const order = [...Array(this.rows).keys()];
    return this.screen === "top" ? order : order.reverse();
  }

  /** The automatic name of every grid row: rows with seats lettered from the screen. */
  autoNames() {
    const names = Array(this.rows).fill("");
    let n = 0;
    for (const r of this.fromScreen()) if (this.rowHasSeats(r)) names[r] = letters(n++);
    return names;
  }

  rowName(r, auto = this.autoNames()) {
    return this.rowNames[r] ?? auto[r];
  }

  /** The numbers of row r's seats: place index -> number. */
  numbers(r) {
    const out = new Map();
    let n = 0;
    const cs = [...Array(this.cols).keys()];
    if (this.numbering === "rtl") cs.reverse();
    for (const c of cs) if (this.cells[r * this.cols + c]) out.set(c, ++n);
    return out;
  }

  /** The automatic focus point, drawn coordinates (place (r, c) spans c..c+1, r..r+1). */
  autoFocal() {
    let minC = Infinity, maxC = -Infinity, first = -1, last = -1;
    for (let r = 0; r < this.rows; r++) {
      for (let c = 0; c < this.cols; c++) {
        if (this.cells[r * this.cols + c]) { minC = Math.min(minC, c); maxC = Math.max(maxC, c); }
      }
      if (this.rowHasSeats(r)) { if (first < 0) first = r; last = r; }
    }
    if (first < 0) return { c: this.cols / 2, r: this.rows / 2 };
    // As the platform's own grids: centre of the seats, two thirds of the rows back.
    const depth = ((last - first + 1) * 2) / 3;
    const r = this.screen === "top" ? first + depth + 0.5 : last + 0.5 - depth;
    return { c: (minC + maxC) / 2 + 0.5, r };
  }

  /** The API's layout plus, for mapping the server's errors back, each seat's place. */
  toLayout() {
    const auto = this.autoNames();
    const seats = [], places = [];
    for (let r = 0; r < this.rows; r++) {
      const nums = this.numbers(r);
      const row = this.rowName(r, auto);
      const y = this.screen === "top" ? r : this.rows - 1 - r;
      for (let c = 0; c < this.cols; c++) {
        const cell = this.cells[r * this.cols + c];
        if (!cell) continue;
        const number = nums.get(c);
        const seat = { id: seatId(row, number), row, number, category: cell.cat, x: c, y };
        if (cell.acc) seat.accessible = true;
        if (cell.comp) seat.companion = true;
        if (cell.blocked) seat.blocked = true;
        seats.push(seat);
        places.push(r * this.cols + c);
      }
    }
    const f = this.focal || this.autoFocal();
    const fy = this.screen === "top" ? f.r - 0.5 : this.rows - 0.5 - f.r;
    return { layout: { seats, focal_x: round2(f.c - 0.5), focal_y: round2(fy) }, places };
  }

  /** Problems the browser can see before the server does: [{message, places}]. */
  check() {
    const out = [];
    const auto = this.autoNames();
    const seats = this.cells.filter(Boolean).length;
    if (!seats) out.push({ message: "The layout has no seats.", places: [] });
    if (seats > MAX_SEATS) out.push({ message: `A screen has at most ${MAX_SEATS} seats (this one has ${seats}).`, places: [] });
    for (let r = 0; r < this.rows; r++) {
      if (!this.rowHasSeats(r)) continue;
      const name = this.rowName(r, auto);
      if (!name || !name.trim()) {
        out.push({ message: `The row on line ${r + 1} has no name.`, places: [...this.numbers(r).keys()].map((c) => r * this.cols + c) });
      }
    }
    return out;
  }

  counts() {
    const by = new Map(this.categories.map((c) => [c, 0]));
    let seats = 0, acc = 0, comp = 0;
    for (const cell of this.cells) {
      if (!cell) continue;
      seats++;
      acc += cell.acc;
      comp += cell.comp;
      by.set(cell.cat, (by.get(cell.cat) || 0) + 1);
    }
    return { seats, acc, comp, by };
  }

  // --- edits ----------------------------------------------------------------------------

  snapshot() {
    this.undoStack.push({
      cells: this.cells.map((c) => (c ? { ...c } : null)), rowNames: [...this.rowNames],
      rows: this.rows, cols: this.cols, focal: this.focal && { ...this.focal },
      categories: [...this.categories],
    });
    if (this.undoStack.length > 60) this.undoStack.shift();
  }

  undo() {
    const s = this.undoStack.pop();
    if (!s) { this.announce("Nothing to undo."); return; }
    Object.assign(this, { cells: s.cells, rowNames: s.rowNames, rows: s.rows, cols: s.cols,
                          focal: s.focal, categories: s.categories });
    this.catIndex = Math.min(this.catIndex, this.categories.length - 1);
    this.cursor = { r: Math.min(this.cursor.r, this.rows - 1), c: Math.min(this.cursor.c, this.cols - 1) };
    this.syncControls();
    this.render();
    this.changed();
    this.announce("Undone.");
  }

  changed() {
    this.updateSummary();
    this.renderRowInputs();
    this.onChange();
  }

  /** What `tool` does to place i, given the stroke's value (decided by its first place). */
  strokeValue(tool, i) {
    const cell = this.cells[i];
    switch (tool) {
      case "seat": return !cell;               // true: make seats
      case "wheelchair": return !(cell && cell.acc);
      case "companion": return !(cell && cell.comp);
      default: return true;
    }
  }

  applyAt(tool, i, value) {
    const cell = this.cells[i];
    switch (tool) {
      case "seat":
        if (value && !cell) this.cells[i] = this.newSeat();
        else if (!value && cell) this.cells[i] = null;
        else return false;
        return true;
      case "paint": {
        const cat = this.categories[this.catIndex];
        if (!cell || cell.cat === cat) return false;
        cell.cat = cat;
        return true;
      }
      case "wheelchair":
        if (!cell || cell.acc === value) return false;
        cell.acc = value;
        if (value) cell.comp = false;
        return true;
      case "companion":
        if (!cell || cell.comp === value) return false;
        cell.comp = value;
        if (value) cell.acc = false;
        return true;
      default:
        return false;
    }
  }

  /** Apply `tool` to places (indexes); the value comes from the first, or the majority
   *  for a whole row or column. Returns how many changed. */
  applyMany(tool, indexes, value) {
    if (value === undefined) value = this.strokeValue(tool, indexes[0]);
    let n = 0;
    for (const i of indexes) {
      if (this.applyAt(tool, i, value)) {
        n++;
        this.errors.delete(i);
        this.paintPlace(i);
      }
    }
    if (n && tool === "seat") this.scheduleLabels();  // automatic names may move
    return n;
  }

  /** Redraw the row names once, on the next frame (a drag changes many places). */
  scheduleLabels() {
    if (this.labelsPending) return;
    this.labelsPending = true;
    requestAnimationFrame(() => {
      this.labelsPending = false;
      this.renderLabels(false);
    });
  }

  lineIndexes(kind, k) {
    if (kind === "col") return [...Array(this.rows).keys()].map((r) => r * this.cols + k);
    return [...Array(this.cols).keys()].map((c) => k * this.cols + c);
  }

  /** The tool on a whole column (kind "col") or row ("row"): seat/gap makes the line all
   *  gaps if it has any seat, else all seats; the flags set unless all are set. */
  applyLine(tool, kind, k) {
    const idx = this.lineIndexes(kind, k);
    let value;
    if (tool === "seat") value = !idx.some((i) => this.cells[i]);
    else if (tool === "wheelchair") value = !idx.filter((i) => this.cells[i]).every((i) => this.cells[i].acc);
    else if (tool === "companion") value = !idx.filter((i) => this.cells[i]).every((i) => this.cells[i].comp);
    else value = true;
    this.snapshot();
    const n = this.applyMany(tool, idx, value);
    if (!n) this.undoStack.pop();
    else this.changed();
    return n;
  }

  setFocal(c, r) {
    this.snapshot();
    this.focal = { c, r };
    this.drawFocal();
    this.changed();
  }

  setCategory(index) {
    if (index < 0 || index >= this.categories.length) return false;
    this.catIndex = index;
    this.syncControls();
    return true;
  }

  addCategory(name) {
    name = name.trim();
    if (!name || this.categories.includes(name)) return false;
    this.snapshot();
    this.categories.push(name);
    this.catIndex = this.categories.length - 1;
    this.syncControls();
    this.changed();
    return true;
  }

  renameCategory(index, name) {
    name = name.trim();
    const old = this.categories[index];
    if (!name || name === old || this.categories.includes(name)) return false;
    this.snapshot();
    this.categories[index] = name;
    for (const cell of this.cells) if (cell && cell.cat === old) cell.cat = name;
    this.changed();
    return true;
  }

  removeCategory(index) {
    const name = this.categories[index];
    if (this.categories.length < 2) return "A layout needs at least one category.";
    if (this.cells.some((c) => c && c.cat === name)) return `Seats are still ${name}: paint them another category first.`;
    this.snapshot();
    this.categories.splice(index, 1);
    this.catIndex = Math.min(this.catIndex, this.categories.length - 1);
    this.syncControls();
    this.changed();
    return "";
  }

  renameRow(r, name) {
    const auto = this.autoNames()[r];
    const value = name.trim();
    const next = !value || value === auto ? null : value;
    if (next === this.rowNames[r]) return;
    this.snapshot();
    this.rowNames[r] = next;
    this.renderLabels(false);
    this.changed();
  }

  setScreen(side) {
    if (side === this.screen) return;
    this.snapshot();
    this.screen = side;  // a focus point set by hand stays on its seat
    this.render();
    this.changed();
  }

  setNumbering(dir) {
    if (dir === this.numbering) return;
    this.numbering = dir;
    this.announceCursor();
    this.changed();
  }

  // --- errors from the server -------------------------------------------------------------

  /** errors: [{message, places: [place index]}], shown on the places and listed. */
  showErrors(errors) {
    this.errors.clear();
    for (const e of errors) for (const i of e.places) this.errors.set(i, e.message);
    for (let i = 0; i < this.cells.length; i++) this.paintPlace(i);
    this.errList.replaceChildren(...errors.map((e) => h("li", {},
      e.message, " ",
      e.places.length ? h("button", { type: "button", class: "link", text: "Show me",
        onclick: () => this.goTo(e.places[0]) }) : null)));
    this.errBox.hidden = !errors.length;
    if (errors.length && errors[0].places.length) this.goTo(errors[0].places[0], false);
  }

  clearErrors() { this.showErrors([]); }

  goTo(i, focus = true) {
    this.cursor = { r: Math.floor(i / this.cols), c: i % this.cols };
    this.drawCursor();
    this.announceCursor();
    if (focus) this.grid.focus();
    const rect = this.rects[i];
    if (rect && rect.scrollIntoView) rect.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  // --- the DOM ----------------------------------------------------------------------------

  build() {
    const toolName = `tool-${Math.random().toString(36).slice(2, 8)}`;
    this.toolInputs = new Map();
    const tools = h("fieldset", { class: "le-tools" }, h("legend", { text: "Tool (click or drag on the grid)" }),
      TOOLS.map(([value, label, key]) => {
        const input = h("input", { type: "radio", name: toolName, value, checked: value === this.tool,
          onchange: () => { this.tool = value; this.announceCursor(); } });
        this.toolInputs.set(value, input);
        return h("label", { class: "le-tool" }, input, h("span", { text: label }),
          h("kbd", { text: key, "aria-hidden": "true" }));
      }));

    this.catList = h("ol", { class: "le-cats" });
    const addInput = h("input", { name: "new-category", placeholder: "e.g. Gold", maxlength: "40",
      "aria-label": "New category name" });
    const addCat = () => {
      if (this.addCategory(addInput.value)) { addInput.value = ""; this.announce(`Category ${this.categories[this.catIndex]} added.`); }
    };
    addInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); addCat(); } });
    const cats = h("fieldset", { class: "le-catbox" },
      h("legend", { text: "Categories (dearest first; key 1-9 paints)" }), this.catList,
      h("div", { class: "le-addcat" }, addInput, h("button", { type: "button", text: "Add category", onclick: addCat })));

    this.screenSel = h("select", { "aria-label": "Screen position",
      onchange: () => this.setScreen(this.screenSel.value) },
    h("option", { value: "top", text: "Screen at the top" }),
    h("option", { value: "bottom", text: "Screen at the bottom" }));
    this.numberSel = h("select", { "aria-label": "Seat numbers",
      onchange: () => this.setNumbering(this.numberSel.value) },
    h("option", { value: "ltr", text: "Numbers left to right" }),
    h("option", { value: "rtl", text: "Numbers right to left" }));
    this.focalBtn = h("button", { type: "button", text: "Automatic focus point",
      onclick: () => { this.snapshot(); this.focal = null; this.drawFocal(); this.changed(); this.announce("Focus point automatic."); } });
    const undo = h("button", { type: "button", text: "Undo", onclick: () => this.undo() });
    const options = h("div", { class: "le-options" },
      h("label", {}, "Screen", this.screenSel), h("label", {}, "Seat numbers", this.numberSel),
      this.focalBtn, undo);

    this.helpId = `le-help-${toolName}`;
    const help = h("p", { id: this.helpId, class: "hint muted" },
      "Keyboard: arrow keys move; Space seat/gap; 1-9 category; W wheelchair; C companion; ",
      "F focus point; R rename row; Shift+arrow paints while moving; Ctrl+Z undo. ",
      "Above the first row or left of a row, the same keys act on the whole column or row.");

    this.grid = svg("svg", { class: "le-grid", tabindex: "0", role: "application",
      "aria-roledescription": "seat layout editor", "aria-label": "Seat layout grid",
      "aria-describedby": this.helpId, preserveAspectRatio: "xMidYMin meet" });
    this.status = h("p", { class: "le-status", role: "status", "aria-live": "polite" });
    this.summary = h("p", { class: "le-summary muted small" });

    this.rowList = h("ol", { class: "le-rows" });
    const rows = h("details", { class: "le-rowbox" },
      h("summary", { text: "Row names" }),
      h("p", { class: "muted small", text: "Empty: named automatically (A is the row nearest the screen)." }),
      this.rowList);
    this.rowBox = rows;

    this.errList = h("ul", { class: "le-errlist" });
    this.errBox = h("div", { class: "le-errors", role: "alert" },
      h("strong", { text: "Fix these before saving:" }), this.errList);
    this.errBox.hidden = true;

    this.root.classList.add("layout-editor");
    this.root.replaceChildren(h("div", { class: "le-bar" }, tools, cats, options), help,
      h("div", { class: "le-gridwrap" }, this.grid), this.status, this.summary, this.errBox, rows);

    this.grid.addEventListener("pointerdown", (ev) => this.pointerDown(ev));
    this.grid.addEventListener("pointermove", (ev) => this.pointerMove(ev));
    this.grid.addEventListener("pointerup", (ev) => this.pointerUp(ev));
    this.grid.addEventListener("pointercancel", (ev) => this.pointerUp(ev));
    this.grid.addEventListener("keydown", (ev) => this.key(ev));
    this.grid.addEventListener("focus", () => { this.grid.classList.add("focused"); this.announceCursor(); });
    this.grid.addEventListener("blur", () => this.grid.classList.remove("focused"));
  }

  syncControls() {
    if (!this.catList) return;
    this.catList.replaceChildren(...this.categories.map((name, i) => {
      const input = h("input", { value: name, maxlength: "40", "aria-label": `Category ${i + 1} name`,
        onchange: () => { if (!this.renameCategory(i, input.value)) input.value = this.categories[i]; } });
      const pick = h("button", { type: "button", class: "le-swatch", "aria-pressed": i === this.catIndex ? "true" : "false",
        title: `Paint with ${name}`, "aria-label": `Paint with ${name} (key ${i + 1})`,
        onclick: () => { this.setCategory(i); this.tool = "paint"; this.toolInputs.get("paint").checked = true; } },
      h("span", { class: `le-chip cat-${i % PALETTE.length}`, "aria-hidden": "true", text: i < 9 ? String(i + 1) : "" }));
      const remove = h("button", { type: "button", class: "ghost small", text: "×", "aria-label": `Remove category ${name}`,
        onclick: () => { const why = this.removeCategory(i); if (why) this.announce(why); } });
      return h("li", { class: i === this.catIndex ? "current" : "" }, pick, input, remove);
    }));
    this.screenSel.value = this.screen;
    this.numberSel.value = this.numbering;
    const tool = this.toolInputs.get(this.tool);
    if (tool) tool.checked = true;
  }

  /** Draw everything (after a reset, a resize, a load, moving the screen). */
  render() {
    const g = this.grid;
    const screenTop = this.screen === "top";
    const top = screenTop ? -3 : -1.4;
    const bottom = this.rows + (screenTop ? 0.3 : 2);
    g.setAttribute("viewBox", `${-HEAD} ${top} ${this.cols + 2 * HEAD} ${bottom - top}`);
    g.replaceChildren();
    // The screen.
    const sy = screenTop ? -2.4 : this.rows + 0.9;
    const bend = screenTop ? -0.8 : 0.8;
    g.append(svg("path", { class: "le-screen", d: `M 0 ${sy} Q ${this.cols / 2} ${sy + bend} ${this.cols} ${sy}`, "aria-hidden": "true" }));
    const st = svg("text", { class: "le-screen-label", x: this.cols / 2, y: screenTop ? sy + 0.75 : sy + 0.1, "aria-hidden": "true" });
    st.textContent = "SCREEN";
    g.append(st);
    // Column numbers.
    const cols = svg("g", { class: "le-colheads", "aria-hidden": "true" });
    for (let c = 0; c < this.cols; c++) {
      cols.append(svg("rect", { class: "le-head", x: c + 0.05, y: -1.2, width: 0.9, height: 0.9, "data-col": c }));
      const t = svg("text", { x: c + 0.5, y: -0.72 });
      t.textContent = String(c + 1);
      cols.append(t);
    }
    g.append(cols);
    this.rowHeads = svg("g", { class: "le-rowheads", "aria-hidden": "true" });
    this.rowLabelNodes = null;
    g.append(this.rowHeads);
    // The places: one rect each, in one group; nothing listens on them.
    const places = svg("g", { class: "le-places" });
    this.rects = new Array(this.cells.length);
    for (let r = 0; r < this.rows; r++) {
      for (let c = 0; c < this.cols; c++) {
        const rect = svg("rect", { x: c + OFF, y: r + OFF, width: SEAT, height: SEAT, rx: 0.16 });
        this.rects[r * this.cols + c] = rect;
        places.append(rect);
      }
    }
    g.append(places);
    this.glyphs = svg("g", { class: "le-glyphs", "aria-hidden": "true" });
    this.glyphNodes = new Map();
    g.append(this.glyphs);
    this.focalNode = svg("g", { class: "le-focal", "aria-hidden": "true" });
    this.focalNode.append(svg("circle", { r: 0.32 }), svg("path", { d: "M -0.5 0 H 0.5 M 0 -0.5 V 0.5" }));
    g.append(this.focalNode);
    this.cursorNode = svg("rect", { class: "le-cursor", width: 1, height: 1, rx: 0.2, "aria-hidden": "true" });
    g.append(this.cursorNode);
    for (let i = 0; i < this.cells.length; i++) this.paintPlace(i);
    this.renderLabels();
    this.drawCursor();
    this.updateSummary();
  }

  paintPlace(i) {
    const rect = this.rects[i];
    if (!rect) return;
    const cell = this.cells[i];
    const k = cell ? this.categories.indexOf(cell.cat) : -1;
    let cls = cell ? `le-seat cat-${(k < 0 ? 0 : k) % PALETTE.length}` : "le-gap";
    if (cell && cell.blocked) cls += " le-blocked";
    if (this.errors.has(i)) cls += " le-invalid";
    rect.setAttribute("class", cls);
    const glyph = cell && (cell.acc ? "♿" : cell.comp ? "C" : "");
    let node = this.glyphNodes.get(i);
    if (!glyph) {
      if (node) { node.remove(); this.glyphNodes.delete(i); }
      return;
    }
    if (!node) {
      node = svg("text", { x: (i % this.cols) + 0.5, y: Math.floor(i / this.cols) + 0.68 });
      this.glyphs.append(node);
      this.glyphNodes.set(i, node);
    }
    node.textContent = glyph;
  }

  /** Row names beside the grid, the row-name inputs and the focus point. Only names
   *  that changed are touched (a redraw of every label per frame costs a drag dearly). */
  renderLabels(rebuildInputs = true) {
    const auto = this.autoNames();
    if (!this.rowLabelNodes || this.rowLabelNodes.length !== this.rows) {
      const heads = [];
      this.rowLabelNodes = [];
      for (let r = 0; r < this.rows; r++) {
        heads.push(svg("rect", { class: "le-head", x: -HEAD + 0.1, y: r + 0.05, width: HEAD - 0.2, height: 0.9, "data-row": r }));
        const pair = [-HEAD / 2, this.cols + HEAD / 2].map((x) => svg("text", { x, y: r + 0.5 }));
        heads.push(...pair);
        this.rowLabelNodes.push(pair);
      }
      this.rowHeads.replaceChildren(...heads);
    }
    for (let r = 0; r < this.rows; r++) {
      const name = this.rowName(r, auto) || "·";
      const custom = this.rowNames[r] ? "custom" : "";
      for (const t of this.rowLabelNodes[r]) {
        if (t.textContent !== name) t.textContent = name;
        if ((t.getAttribute("class") || "") !== custom) t.setAttribute("class", custom);
      }
    }
    if (rebuildInputs) this.renderRowInputs(auto);
    this.drawFocal();
  }

  renderRowInputs(auto = this.autoNames()) {
    const active = document.activeElement;
    if (active && this.rowList.contains(active)) return; // typing: leave the inputs be
    const items = [];
    this.rowInputs = new Map();
    for (const r of this.fromScreen()) {
      if (!this.rowHasSeats(r)) continue;
      const input = h("input", { value: this.rowNames[r] ?? "", placeholder: auto[r], maxlength: "8",
        "aria-label": `Name of the row on line ${r + 1} (automatic: ${auto[r]})`, "data-row": r });
      input.addEventListener("change", () => this.renameRow(r, input.value));
      input.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") { ev.preventDefault(); this.renameRow(r, input.value); }
        if (ev.key === "Escape" || ev.key === "Enter") {
          this.renameRow(r, input.value);
          this.cursor = { r, c: Math.max(0, this.cursor.c) };
          this.drawCursor();
          this.grid.focus();
        }
      });
      this.rowInputs.set(r, input);
      items.push(h("li", {}, h("label", {}, h("span", { text: `Line ${r + 1}` }), input)));
    }
    this.rowList.replaceChildren(...items);
  }

  drawFocal() {
    if (!this.focalNode) return;
    const f = this.focal || this.autoFocal();
    this.focalNode.setAttribute("transform", `translate(${f.c} ${f.r})`);
    this.focalNode.classList.toggle("auto", !this.focal);
    this.focalBtn.disabled = !this.focal;
  }

  drawCursor() {
    const { r, c } = this.cursor;
    let x = c, y = r, w = 1, hgt = 1;
    if (r < 0) { y = -1.25; hgt = 1; }
    if (c < 0) { x = -HEAD + 0.05; w = HEAD - 0.1; }
    this.cursorNode.setAttribute("x", x);
    this.cursorNode.setAttribute("y", y);
    this.cursorNode.setAttribute("width", w);
    this.cursorNode.setAttribute("height", hgt);
  }

  updateSummary() {
    const n = this.counts();
    const parts = [...n.by].filter(([, k]) => k).map(([cat, k]) => `${cat} ${k}`);
    this.summary.textContent = `${n.seats} seats (${parts.join(", ") || "none"}); `
      + `${n.acc} wheelchair, ${n.comp} companion. Grid ${this.rows} × ${this.cols}.`;
  }

  announce(text) { this.status.textContent = text; }

  describe(r, c) {
    if (r < 0 && c < 0) return "Corner.";
    if (r < 0) {
      const seats = this.lineIndexes("col", c).filter((i) => this.cells[i]).length;
      return `Column ${c + 1}: ${seats ? `${seats} seats` : "an aisle"}. Space toggles the whole column; W, C and numbers mark all its seats.`;
    }
    const name = this.rowName(r) || "(no name)";
    if (c < 0) {
      const seats = this.lineIndexes("row", r).filter((i) => this.cells[i]).length;
      return `Row ${name}, line ${r + 1}: ${seats} seats. Space toggles the whole row; W, C and numbers mark all its seats; R renames it.`;
    }
    const cell = this.cell(r, c);
    const err = this.errors.get(r * this.cols + c);
    if (!cell) return `Gap at line ${r + 1}, place ${c + 1}.${err ? ` Problem: ${err}` : ""}`;
    const number = this.numbers(r).get(c);
    const extra = [cell.acc && "wheelchair space", cell.comp && "companion seat", cell.blocked && "out of service"].filter(Boolean);
    return [`Seat ${seatId(name, number)}`, cell.cat, ...extra].join(", ") + `.${err ? ` Problem: ${err}` : ""}`;
  }

  announceCursor() {
    this.announce(this.describe(this.cursor.r, this.cursor.c));
  }

  // --- pointer --------------------------------------------------------------------------

  /** The place under a pointer event: {r, c} with -1 for the column / row headers. */
  placeAt(ev) {
    // During a stroke the grid does not move: its transform is read once, at the start
    // (reading it forces a layout, which a drag over thousands of places cannot afford).
    let inv = this.stroke && this.stroke.inv;
    if (!inv) {
      const ctm = this.grid.getScreenCTM();
      if (!ctm) return null;
      inv = ctm.inverse();
      this.lastInv = inv;
    }
    const pt = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(inv);
    const c = Math.floor(pt.x), r = Math.floor(pt.y);
    const inCols = c >= 0 && c < this.cols, inRows = r >= 0 && r < this.rows;
    if (inCols && inRows) return { r, c, x: pt.x, y: pt.y };
    if (inCols && pt.y >= -1.3 && pt.y < 0) return { r: -1, c, x: pt.x, y: pt.y };
    if (inRows && pt.x >= -HEAD && pt.x < 0) return { r, c: -1, x: pt.x, y: pt.y };
    return null;
  }

  pointerDown(ev) {
    if (ev.button !== 0) return;
    const at = this.placeAt(ev);
    if (!at) return;
    ev.preventDefault();
    this.grid.focus({ preventScroll: true });
    this.cursor = { r: at.r, c: at.c };
    this.drawCursor();
    if (at.r < 0 || at.c < 0) {
      if (this.tool === "focus") return;
      const n = at.r < 0 ? this.applyLine(this.tool, "col", at.c) : this.applyLine(this.tool, "row", at.r);
      this.announce(n ? this.describe(at.r, at.c) : "Nothing to change there.");
      return;
    }
    if (this.tool === "focus") {
      this.setFocal(at.x, at.y);
      this.stroke = { tool: "focus", inv: this.lastInv };
      this.grid.setPointerCapture(ev.pointerId);
      return;
    }
    const i = at.r * this.cols + at.c;
    this.snapshot();
    const value = this.strokeValue(this.tool, i);
    this.stroke = { tool: this.tool, value, last: at, n: 0, inv: this.lastInv };
    this.stroke.n += this.applyMany(this.tool, [i], value);
    this.grid.setPointerCapture(ev.pointerId);
  }

  pointerMove(ev) {
    if (!this.stroke) return;
    const at = this.placeAt(ev);
    if (!at) return;
    if (this.stroke.tool === "focus") {
      this.focal = { c: at.x, r: at.y };
      this.drawFocal();
      return;
    }
    if (at.r < 0 || at.c < 0) return;
    const last = this.stroke.last;
    if (last.r === at.r && last.c === at.c) return;
    // Every place between the last one and this (a fast drag skips places otherwise).
    const steps = Math.max(Math.abs(at.r - last.r), Math.abs(at.c - last.c));
    const idx = [];
    for (let s = 1; s <= steps; s++) {
      const r = Math.round(last.r + ((at.r - last.r) * s) / steps);
      const c = Math.round(last.c + ((at.c - last.c) * s) / steps);
      idx.push(r * this.cols + c);
    }
    this.stroke.n += this.applyMany(this.stroke.tool, idx, this.stroke.value);
    this.stroke.last = at;
    this.cursor = { r: at.r, c: at.c };
    this.drawCursor();
  }

  pointerUp(ev) {
    if (!this.stroke) return;
    const stroke = this.stroke;
    this.stroke = null;
    if (this.grid.hasPointerCapture(ev.pointerId)) this.grid.releasePointerCapture(ev.pointerId);
    if (stroke.tool === "focus") { this.changed(); this.announce("Focus point moved."); return; }
    if (!stroke.n) { this.undoStack.pop(); return; }
    this.changed();
    this.announceCursor();
  }

  // --- keyboard -------------------------------------------------------------------------

  key(ev) {
    if (ev.altKey || ev.metaKey) return;
    const { r, c } = this.cursor;
    const k = ev.key;
    if ((ev.ctrlKey && (k === "z" || k === "Z")) || (!ev.ctrlKey && (k === "u" || k === "U"))) {
      ev.preventDefault();
      this.undo();
      return;
    }
    if (ev.ctrlKey) return;
    const moves = {
      ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0],
    };
    if (moves[k]) {
      ev.preventDefault();
      const [dr, dc] = moves[k];
      const nr = Math.max(-1, Math.min(this.rows - 1, r + dr));
      const nc = Math.max(-1, Math.min(this.cols - 1, c + dc));
      if (nr === -1 && nc === -1) return;
      this.cursor = { r: nr, c: nc };
      this.drawCursor();
      if (ev.shiftKey && nr >= 0 && nc >= 0 && r >= 0 && c >= 0 && this.tool !== "focus") {
        // Shift+arrow carries the place we came from onto the next: a seat, a gap, a flag
        // (the paint tool paints the current category).
        const prev = this.cells[r * this.cols + c];
        const value = this.tool === "seat" ? !!prev : this.tool === "wheelchair" ? !!(prev && prev.acc)
          : this.tool === "companion" ? !!(prev && prev.comp) : true;
        this.snapshot();
        if (this.applyMany(this.tool, [nr * this.cols + nc], value)) this.changed();
        else this.undoStack.pop();
      }
      this.announceCursor();
      return;
    }
    const jump = { Home: () => ({ r, c: 0 }), End: () => ({ r, c: this.cols - 1 }),
      PageUp: () => ({ r: 0, c }), PageDown: () => ({ r: this.rows - 1, c }) }[k];
    if (jump) {
      ev.preventDefault();
      this.cursor = jump();
      this.drawCursor();
      this.announceCursor();
      return;
    }
    const here = r >= 0 && c >= 0 ? [r * this.cols + c] : null;
    const line = r < 0 ? ["col", c] : c < 0 ? ["row", r] : null;
    const act = (tool) => {
      let n;
      if (line) n = this.applyLine(tool, ...line);
      else {
        this.snapshot();
        n = this.applyMany(tool, here);
        if (n) this.changed(); else this.undoStack.pop();
      }
      this.announce(n ? this.describe(r, c) : `Nothing to change: ${this.describe(r, c)}`);
    };
    if (k === " " || k === "Spacebar") { ev.preventDefault(); act("seat"); return; }
    if (/^[1-9]$/.test(k)) {
      ev.preventDefault();
      if (!this.setCategory(Number(k) - 1)) { this.announce(`There is no category ${k}.`); return; }
      act("paint");
      return;
    }
    const lower = k.length === 1 ? k.toLowerCase() : k;
    if (lower === "w") { ev.preventDefault(); act("wheelchair"); return; }
    if (lower === "c") { ev.preventDefault(); act("companion"); return; }
    if (lower === "f" && here) {
      ev.preventDefault();
      this.setFocal(c + 0.5, r + 0.5);
      this.announce(`Focus point at ${this.describe(r, c)}`);
      return;
    }
    if (lower === "r" && r >= 0) {
      ev.preventDefault();
      this.rowBox.open = true;
      this.renderRowInputs();
      const input = this.rowInputs && this.rowInputs.get(r);
      if (input) { input.focus(); input.select(); } else this.announce("This line has no seats to name.");
    }
  }
}

function round2(v) { return Math.round(v * 100) / 100; }
