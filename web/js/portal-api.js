// What the partner portal's screens share: calls to the partner API (the same
// /partner/v1/... endpoints integrations use, authenticated by the portal's session cookie;
// fetch() sends the Origin header on same-origin writes, which the server requires), ETags,
// paginated lists, and how a screen degrades when this server lacks an endpoint.
import { ApiError, el } from "./api.js";

export { ApiError, el };

/** The partner API: {data, etag, status}. Throws ApiError (message = the server's reason).
 *  `ifMatch`: the ETag the record was read with (412 if it changed meanwhile); `create`:
 *  If-None-Match: * (412 if the record exists). A 429 is retried once after its
 *  Retry-After (at most 5 s). */
export async function call(path, { method = "GET", body, ifMatch, create = false, retry = true } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  if (ifMatch) headers["If-Match"] = ifMatch;
  if (create) headers["If-None-Match"] = "*";
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiError(0, { error: { code: "network", message: "network error: check your connection" } });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (resp.status === 429 && retry) {
    const wait = Math.min(5, Number(resp.headers.get("Retry-After")) || 1);
    await new Promise((r) => setTimeout(r, wait * 1000));
    return call(path, { method, body, ifMatch, create, retry: false });
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data);
    if (resp.status === 412) {
      err.message = "Someone changed this meanwhile (another tab or an integration). "
        + "Reload it, then make your change again.";
    }
    throw err;
  }
  return { data, etag: resp.headers.get("ETag"), status: resp.status };
}

export const get = async (path) => (await call(path)).data;
export const send = async (method, path, body, ifMatch) =>
  (await call(path, { method, body, ifMatch })).data;

/** True when the server has no such endpoint (as opposed to no such record): an unknown
 *  route answers 404 "Not Found", a known path without this method 405. */
export function missing(e) {
  return e instanceof ApiError && (e.status === 405 || e.status === 501
    || (e.status === 404 && (e.message === "Not Found" || e.code === "http_error")));
}

export function enc(id) { return encodeURIComponent(id); }

// --- lists, with a fallback -----------------------------------------------------------
// GET /partner/v1/{theatres,screens,movies}?limit=&cursor= -> {items, next_cursor}. Where
// the server has no list yet, the portal shows what was saved from this browser (kept in
// localStorage per partner), and says so.

const ID_FIELD = { theatres: "theatre_id", screens: "screen_id", movies: "movie_id" };
let partnerId = "anon";

export function setPartner(id) { partnerId = id; }

function registryKey(kind) { return `bmm.portal.${partnerId}.${kind}`; }

function registry(kind) {
  try { return JSON.parse(localStorage.getItem(registryKey(kind)) || "{}"); } catch { return {}; }
}

function remember(kind, record) {
  const all = registry(kind);
  all[record[ID_FIELD[kind]]] = record;
  try { localStorage.setItem(registryKey(kind), JSON.stringify(all)); } catch { /* full */ }
}

function forget(kind, id) {
  const all = registry(kind);
  delete all[id];
  try { localStorage.setItem(registryKey(kind), JSON.stringify(all)); } catch { /* full */ }
}

/** Every item of a paginated partner list: {items, degraded}. `degraded`: a sentence
 *  saying the list came from this browser because the server has none. */
export async function listAll(kind, max = 2000) {
  const items = [];
  let cursor = null;
  try {
    do {
      const q = new URLSearchParams({ limit: "200" });
      if (cursor) q.set("cursor", cursor);
      const page = await get(`/partner/v1/${kind}?${q}`);
      items.push(...(page.items || []));
      cursor = page.next_cursor;
    } while (cursor && items.length < max);
    return { items, degraded: "" };
  } catch (e) {
    if (!missing(e)) throw e;
    return {
      items: Object.values(registry(kind)),
      degraded: `This server cannot list your ${kind} yet (GET /partner/v1/${kind} is missing): `
        + `showing the ones saved from this browser.`,
    };
  }
}

/** One record {data, etag}: GET /partner/v1/{kind}/{id}, else what this browser saved. */
export async function getOne(kind, id) {
  try {
    return await call(`/partner/v1/${kind}/${enc(id)}`);
  } catch (e) {
    if (!missing(e)) throw e;
    const data = registry(kind)[id];
    if (!data) throw new ApiError(404, { error: { code: "not_found", message: `no ${kind.slice(0, -1)} ${id}` } });
    return { data, etag: null };
  }
}

/** PUT a catalog record: with If-Match when it was read with an ETag, create-only
 *  (If-None-Match: *) when `etag` is "new". */
export async function putOne(kind, id, body, etag) {
  const out = await call(`/partner/v1/${kind}/${enc(id)}`, {
    method: "PUT", body, ifMatch: etag && etag !== "new" ? etag : undefined, create: etag === "new" });
  remember(kind, out.data);
  return out;
}

/** Retire a theatre, screen or movie (DELETE). The server refuses with 409 `in_use` and
 *  its reason while shows still use it. */
export async function retire(kind, id, etag) {
  try {
    const out = await call(`/partner/v1/${kind}/${enc(id)}`, { method: "DELETE", ifMatch: etag || undefined });
    forget(kind, id);
    return out.data;
  } catch (e) {
    if (missing(e)) {
      throw new ApiError(e.status, { error: { code: "unsupported",
        message: `Retiring ${kind} is not available on this server yet (DELETE /partner/v1/${kind}/{id}).` } });
    }
    throw e;
  }
}

// --- ids, dates, small UI bits ----------------------------------------------------------

/** A fresh id for a new record: a slug of its name and a random tail, [A-Za-z0-9_-]. */
export function newId(prefix, name) {
  const slug = String(name || "").normalize("NFKD").replace(/[^A-Za-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "").toLowerCase().slice(0, 24);
  const tail = Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("");
  return [prefix, slug, tail].filter(Boolean).join("-");
}

/** The parts of an instant on the theatre's clock. */
export function wallParts(date, tz) {
  const fmt = new Intl.DateTimeFormat("en-GB", {
    timeZone: tz || "UTC", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });
  const p = Object.fromEntries(fmt.formatToParts(date).map((x) => [x.type, x.value]));
  return { y: +p.year, mo: +p.month, d: +p.day, h: +p.hour % 24, mi: +p.minute, s: +p.second };
}

/** YYYY-MM-DD of an instant on the theatre's clock. */
export function wallDate(date, tz) {
  const p = wallParts(date, tz);
  return `${p.y}-${String(p.mo).padStart(2, "0")}-${String(p.d).padStart(2, "0")}`;
}

/** "HH:MM" of an instant on the theatre's clock. */
export function wallTime(date, tz) {
  const p = wallParts(date, tz);
  return `${String(p.h).padStart(2, "0")}:${String(p.mi).padStart(2, "0")}`;
}

/** The instant at theatre-local date "YYYY-MM-DD" and time "HH:MM" (a Date). */
export function fromWall(dateStr, timeStr, tz) {
  const [y, mo, d] = dateStr.split("-").map(Number);
  const [h, mi] = timeStr.split(":").map(Number);
  const want = Date.UTC(y, mo - 1, d, h, mi);
  let t = want;
  for (let i = 0; i < 3; i++) {  // converge on the zone's offset at that moment
    const p = wallParts(new Date(t), tz);
    const seen = Date.UTC(p.y, p.mo - 1, p.d, p.h, p.mi);
    if (seen === want) break;
    t += want - seen;
  }
  return new Date(t);
}

/** YYYY-MM-DD plus n days. */
export function addDays(dateStr, n) {
  const [y, mo, d] = dateStr.split("-").map(Number);
  const t = new Date(Date.UTC(y, mo - 1, d + n));
  return t.toISOString().slice(0, 10);
}

/** A Date as the API's UTC ISO form, to the second: 2025-03-01T14:30:00Z. */
export function isoZ(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** A note box in `container` (a degraded feature, an empty list): replaces its text. */
export function note(node, text, kind = "info") {
  if (!node) return;
  node.textContent = text || "";
  node.dataset.kind = kind;
  node.hidden = !text;
}

/** Run `fn` with `button` busy; errors go to `onError` (default: the page message). */
export async function busy(button, fn, onError) {
  if (button) { button.disabled = true; button.setAttribute("aria-busy", "true"); }
  try {
    return await fn();
  } catch (e) {
    if (onError) onError(e); else throw e;
    return undefined;
  } finally {
    if (button) { button.disabled = false; button.removeAttribute("aria-busy"); }
  }
}

/** Form values as an object (multi-valued names become arrays). */
export function values(form) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) {
    if (k in out) out[k] = [].concat(out[k], v);
    else out[k] = v;
  }
  return out;
}

/** A major-units string ("260" or "260.50") as integer minor units of `currency`. */
export function toMinor(text, currency) {
  const digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  const n = Number(String(text).replace(/,/g, ""));
  if (!Number.isFinite(n) || n < 0) return null;
  return Math.round(n * 10 ** digits);
}

export function fromMinor(amount, currency) {
  const digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  return (amount / 10 ** digits).toFixed(digits);
}
