// Partner reports page: sales / revenue / occupancy per show, screen, theatre or day for a
// date range (GET /partner/v1/reports/sales with the partner's API key), drawn as inline
// SVG bar charts and a table; a CSV download; a show's seat heat map.
import { api, el, money } from "./api.js";
import { $, formData, say } from "./page.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Horizontal bars: items [{label, value, text}], widths relative to the largest value. */
function bars(items, alt = false) {
  const row = 22, labelW = 220, width = 640;
  const max = Math.max(1, ...items.map((i) => i.value));
  const chart = svg("svg", { class: "bars", width: "100%", viewBox: `0 0 ${width} ${row * items.length + 4}`,
                             role: "img" });
  items.forEach((item, n) => {
    const y = n * row + 2;
    const w = Math.max(1, ((width - labelW - 110) * item.value) / max);
    chart.append(svg("text", { x: 0, y: y + 14 }, item.label.slice(0, 34)),
                 svg("rect", { class: alt ? "bar alt" : "bar", x: labelW, y, width: w, height: row - 6 }),
                 svg("text", { x: labelW + w + 6, y: y + 14 }, item.text));
  });
  return chart;
}

function key() {
  const value = $("report-form").elements.key.value.trim();
  sessionStorage.setItem("bmm-report-key", value);
  return value;
}

function auth() {
  return { Authorization: `Bearer ${key()}` };
}

function query() {
  const f = formData($("report-form"));
  return new URLSearchParams({ from: f.from, to: f.to, group_by: f.group_by }).toString();
}

async function load() {
  const report = await api(`/partner/v1/reports/sales?${query()}`, { headers: auth() });
  const rows = report.rows;
  $("results").hidden = false;
  $("no-rows").hidden = rows.length > 0;
  $("revenue-chart").replaceChildren(bars(rows.map((r) => ({
    label: r.label, value: r.revenue.amount, text: money(r.revenue) }))));
  $("occupancy-chart").replaceChildren(bars(rows.map((r) => ({
    label: r.label, value: r.occupancy, text: `${(r.occupancy * 100).toFixed(1)} %` })), true));
  $("rows").replaceChildren(...rows.map((r) => el("tr", {},
    el("td", { text: r.label, title: r.key }),
    el("td", { text: String(r.shows) }), el("td", { text: String(r.bookings) }),
    el("td", { text: String(r.tickets) }), el("td", { text: String(r.cancelled) }),
    el("td", { text: money(r.revenue) }), el("td", { text: money(r.refunds) }),
    el("td", { text: `${r.booked_seats} / ${r.sellable_seats}` }),
    el("td", {}, report.group_by === "show"
      ? el("button", { type: "button", text: "Heat map", onclick: () => heatmap(r.key, r.label) })
      : ""))));
}

async function heatmap(showId, label) {
  try {
    const map = await api(`/partner/v1/reports/shows/${encodeURIComponent(showId)}/heatmap`,
                          { headers: auth() });
    const cell = 24;
    const xs = map.seats.map((s) => s.x), ys = map.seats.map((s) => s.y);
    const minX = Math.min(...xs), minY = Math.min(...ys);
    const w = (Math.max(...xs) - minX + 1) * cell, h = (Math.max(...ys) - minY + 1) * cell;
    const pic = svg("svg", { class: "heat", width: "100%", viewBox: `0 0 ${w} ${h}`, role: "img" });
    for (const s of map.seats) {
      const r = svg("rect", { class: s.status, x: (s.x - minX) * cell + 2, y: (s.y - minY) * cell + 2,
                              width: cell - 4, height: cell - 4, rx: 3, "data-seat": s.id });
      r.append(svg("title", {}, `${s.id} · ${s.category} · ${s.status}`));
      pic.append(r);
    }
    $("heatmap-title").textContent = `Seat heat map: ${label}`;
    $("heatmap-svg").replaceChildren(pic);
    const c = map.counts;
    $("heatmap-counts").textContent =
      `${c.booked} booked, ${c.held} held, ${c.free} free, ${c.blocked} blocked · ` +
      `occupancy ${(map.occupancy * 100).toFixed(1)} %`;
    $("heatmap").hidden = false;
  } catch (e) {
    say(e.message);
  }
}

async function downloadCsv() {
  try {
    const resp = await fetch(`/partner/v1/reports/sales?${query()}&format=csv`, { headers: auth() });
    if (!resp.ok) throw new Error((await resp.json()).error.message);
    const name = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
    const link = el("a", { href: URL.createObjectURL(await resp.blob()),
                           download: name ? name[1] : "sales.csv" });
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (e) {
    say(e.message);
  }
}

const today = new Date().toISOString().slice(0, 10);
const form = $("report-form");
form.elements.from.value = today;
form.elements.to.value = new Date(Date.now() + 6 * 864e5).toISOString().slice(0, 10);
form.elements.key.value = sessionStorage.getItem("bmm-report-key") || "";

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say("");
  try {
    await load();
  } catch (e) {
    say(e.message);
  }
});
$("csv").addEventListener("click", () => form.reportValidity() && downloadCsv());
