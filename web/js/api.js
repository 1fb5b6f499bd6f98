// Small helpers shared by the pages: JSON fetch with the API's error shape, formatting.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `request failed (${status})`);
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err;
  }
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: { code: "network", message: "network error: check your connection" } });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const moneyFormats = new Map();

/** Integer minor units + ISO currency -> "₹260.00" in the reader's locale. */
export function money(m) {
  if (!m) return "";
  let fmt = moneyFormats.get(m.currency);
  if (!fmt) {
    fmt = new Intl.NumberFormat(undefined, { style: "currency", currency: m.currency });
    moneyFormats.set(m.currency, fmt);
  }
  const digits = fmt.resolvedOptions().maximumFractionDigits;
  return fmt.format(m.amount / 10 ** digits);
}

// Show times are UTC on the wire and shown in the theatre's time zone (an IANA name from
// the API, e.g. "Asia/Kolkata"), never the reader's: "7:30 PM" means 7:30 PM at the theatre.
const dateFormats = new Map();

function formatter(tz, options) {
  const key = `${tz || ""}|${JSON.stringify(options)}`;
  let fmt = dateFormats.get(key);
  if (!fmt) {
    try {
      fmt = new Intl.DateTimeFormat(undefined, { ...options, timeZone: tz || undefined });
    } catch { // an unknown zone name: fall back to the reader's zone rather than break the page
      fmt = new Intl.DateTimeFormat(undefined, options);
    }
    dateFormats.set(key, fmt);
  }
  return fmt;
}

const TIME = { hour: "numeric", minute: "2-digit" };
const DAY = { weekday: "short", day: "numeric", month: "short" };
const WALL = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };

/** "7:30 PM" at the theatre (tz: IANA name; without it, the reader's zone). */
export function timeOf(iso, tz) {
  return formatter(tz, TIME).format(new Date(iso));
}

/** "Tue 12 Aug" at the theatre. */
export function dayOf(iso, tz) {
  return formatter(tz, DAY).format(new Date(iso));
}

/** The zone's short name ("IST", or "GMT+5:30" where the locale has no name for it) when
 *  the theatre's clock differs from the reader's at that moment; "" when they agree. */
export function zoneLabel(iso, tz) {
  if (!tz) return "";
  const d = new Date(iso);
  if (formatter(tz, WALL).format(d) === formatter("", WALL).format(d)) return "";
  const part = formatter(tz, { ...TIME, timeZoneName: "short" }).formatToParts(d)
    .find((p) => p.type === "timeZoneName");
  return part ? part.value : tz;
}

/** "7:30 PM IST": the theatre-local time, labelled when the reader is elsewhere. */
export function localTime(iso, tz) {
  const label = zoneLabel(iso, tz);
  return label ? `${timeOf(iso, tz)} ${label}` : timeOf(iso, tz);
}

/** A local calendar date as YYYY-MM-DD. */
export function isoDate(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") setStyle(node, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Styles through the CSSOM, never a style attribute: the pages' CSP (style-src 'self')
// blocks inline style attributes but not properties set from a script file.
function setStyle(node, css) {
  for (const decl of String(css).split(";")) {
    const at = decl.indexOf(":");
    if (at > 0) node.style.setProperty(decl.slice(0, at).trim(), decl.slice(at + 1).trim());
  }
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
