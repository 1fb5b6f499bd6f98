// The seat map as SVG, drawn to scale from the seats' grid x/y (1 unit = one seat pitch).
// Seats are focusable checkboxes (roving tabindex: Tab enters the map, arrow keys move,
// Enter/Space selects), each labelled like "Row F seat 12, Gold, free".

const NS = "http://www.w3.org/2000/svg";
const SEAT = 0.82;   // seat size within its 1x1 cell
const MARGIN = 1.6;  // room for row labels

// Category colours in price order (dearest first gets the first colour).
export const PALETTE = ["#7c3aed", "#d97706", "#0891b2", "#16a34a", "#db2777", "#4f46e5"];

const STATUS_TEXT = {
  free: "free", held: "held by someone else", booked: "sold", blocked: "not available",
  selected: "selected", mine: "held for you",
};

function svg(tag, attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export class SeatMap {
  /**
   * @param container element to draw into
   * @param data the /seatmap response
   * @param colours category name -> colour
   * @param onToggle (seatId) => void, called for a free or selected seat
   */
  constructor(container, data, colours, onToggle) {
    this.container = container;
    this.seats = new Map(data.seats.map((s) => [s.id, s]));
    this.colours = colours;
    this.onToggle = onToggle;
    this.status = new Map(data.seats.map((s) => [s.id, s.status]));
    this.selected = new Set();
    this.mine = new Set();
    this.nodes = new Map();
    this.focusId = null;
    this.draw(data);
  }

  draw(data) {
    const xs = data.seats.map((s) => s.x), ys = data.seats.map((s) => s.y);
    const minX = Math.min(...xs), maxX = Math.max(...xs);
    const minY = Math.min(...ys), maxY = Math.max(...ys);
    const top = minY - 2.6; // room for the screen
    const w = maxX - minX + 1 + 2 * MARGIN, h = maxY - top + 1 + 0.4;
    const root = svg("svg", {
      viewBox: `${minX - MARGIN} ${top} ${w} ${h}`,
      class: "seatmap", role: "group",
      "aria-label": `Seat map: ${data.seats.length} seats, screen at the top`,
      preserveAspectRatio: "xMidYMin meet",
    });
    // The screen: a soft curve above the front row.
    const cx = (minX + maxX + 1) / 2, half = (maxX - minX + 1) / 2;
    root.append(svg("path", {
      d: `M ${cx - half} ${top + 1.2} Q ${cx} ${top + 0.3} ${cx + half} ${top + 1.2}`,
      class: "screen-line", "aria-hidden": "true",
    }));
    const label = svg("text", { x: cx, y: top + 1.9, class: "screen-label", "aria-hidden": "true" });
    label.textContent = "SCREEN";
    root.append(label);

    // Row labels on both sides.
    const rows = new Map();
    for (const s of data.seats) {
      const r = rows.get(s.row) || { y: s.y, minX: s.x, maxX: s.x };
      r.minX = Math.min(r.minX, s.x); r.maxX = Math.max(r.maxX, s.x);
      rows.set(s.row, r);
    }
    for (const [name, r] of rows) {
      for (const x of [minX - MARGIN / 2 - 0.1, maxX + 1 + MARGIN / 2 + 0.1]) {
        const t = svg("text", { x, y: r.y + 0.5, class: "row-label", "aria-hidden": "true" });
        t.textContent = name;
        root.append(t);
      }
    }

    // Seats, in reading order (row by row, left to right) for screen readers.
    const ordered = [...data.seats].sort((a, b) => a.y - b.y || a.x - b.x);
    this.order = ordered.map((s) => s.id);
    this.rowsByY = new Map();
    for (const s of ordered) {
      if (!this.rowsByY.has(s.y)) this.rowsByY.set(s.y, []);
      this.rowsByY.get(s.y).push(s);
    }
    this.ys = [...this.rowsByY.keys()].sort((a, b) => a - b);
    const off = (1 - SEAT) / 2;
    for (const s of ordered) {
      const g = svg("g", {
        class: "seat", role: "checkbox", tabindex: "-1", "data-seat": s.id,
        transform: `translate(${s.x + off} ${s.y + off})`,
      });
      g.style.setProperty("--cat", this.colours[s.category] || "#64748b");
      const rect = svg("rect", { width: SEAT, height: SEAT, rx: 0.18 });
      g.append(rect);
      if (s.flags.includes("accessible")) {
        const t = svg("text", { x: SEAT / 2, y: SEAT * 0.72, class: "glyph", "aria-hidden": "true" });
        t.textContent = "♿";
        g.append(t);
      }
      const title = svg("title");
      g.append(title);
      g.addEventListener("click", () => this.activate(s.id));
      g.addEventListener("keydown", (ev) => this.key(ev, s));
      g.addEventListener("focus", () => this.setFocus(s.id, false));
      root.append(g);
      this.nodes.set(s.id, g);
      this.paint(s.id);
    }
    this.container.replaceChildren(root);
    this.root = root;
    const first = ordered.find((s) => this.status.get(s.id) === "free") || ordered[0];
    this.setFocus(first.id, false);
  }

  shown(id) {
    if (this.mine.has(id)) return "mine";
    if (this.selected.has(id)) return "selected";
    return this.status.get(id);
  }

  label(id) {
    const s = this.seats.get(id);
    const extra = [];
    if (s.flags.includes("accessible")) extra.push("wheelchair space");
    if (s.flags.includes("companion")) extra.push("companion seat");
    return [`Row ${s.row} seat ${s.number}`, s.category, ...extra, STATUS_TEXT[this.shown(id)]].join(", ");
  }

  paint(id) {
    const g = this.nodes.get(id);
    if (!g) return;
    const shown = this.shown(id);
    g.setAttribute("data-status", shown);
    g.setAttribute("aria-checked", shown === "selected" || shown === "mine" ? "true" : "false");
    const usable = shown === "free" || shown === "selected";
    g.setAttribute("aria-disabled", usable ? "false" : "true");
    const text = this.label(id);
    g.setAttribute("aria-label", text);
    g.querySelector("title").textContent = text;
  }

  /** Apply [[seat, status], ...] from the live socket; returns the selected seats lost. */
  apply(changes) {
    const lost = [];
    for (const [id, st] of changes) {
      if (!this.seats.has(id)) continue;
      this.status.set(id, st);
      if (st !== "free" && this.selected.has(id) && !this.mine.has(id)) {
        this.selected.delete(id);
        lost.push(id);
      }
      this.paint(id);
    }
    return lost;
  }

  replaceAll(statuses) {
    const changes = Object.entries(statuses);
    for (const id of this.seats.keys()) if (!(id in statuses)) changes.push([id, "free"]);
    return this.apply(changes);
  }

  setSelected(ids) {
    const before = new Set([...this.selected, ...ids]);
    this.selected = new Set(ids);
    for (const id of before) this.paint(id);
  }

  setMine(ids) {
    const before = new Set([...this.mine, ...ids]);
    this.mine = new Set(ids);
    for (const id of before) this.paint(id);
  }

  activate(id) {
    this.setFocus(id, true);
    const shown = this.shown(id);
    if (shown === "free" || shown === "selected") this.onToggle(id);
  }

  setFocus(id, move) {
    if (this.focusId && this.focusId !== id) this.nodes.get(this.focusId)?.setAttribute("tabindex", "-1");
    this.focusId = id;
    const g = this.nodes.get(id);
    g.setAttribute("tabindex", "0");
    if (move) g.focus({ preventScroll: false });
  }

  key(ev, s) {
    let next = null;
    const row = this.rowsByY.get(s.y);
    const i = row.indexOf(s);
    switch (ev.key) {
      case "ArrowLeft": next = row[i - 1]; break;
      case "ArrowRight": next = row[i + 1]; break;
      case "Home": next = row[0]; break;
      case "End": next = row[row.length - 1]; break;
      case "ArrowUp":
      case "ArrowDown": {
        const yi = this.ys.indexOf(s.y) + (ev.key === "ArrowUp" ? -1 : 1);
        const other = this.rowsByY.get(this.ys[yi]);
        if (other) next = other.reduce((a, b) => (Math.abs(b.x - s.x) < Math.abs(a.x - s.x) ? b : a));
        break;
      }
      case "Enter":
      case " ":
        ev.preventDefault();
        this.activate(s.id);
        return;
      default:
        return;
    }
    ev.preventDefault();
    if (next) this.setFocus(next.id, true);
  }
}
