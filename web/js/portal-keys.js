// Portal: API keys (create with name, scope and allowed addresses; revoke) and each key's
// usage over the last days (GET /api/partner/keys/{key_id}/usage?days=7: per day
// requests, errors, p95 latency).
import { api, el } from "./api.js";
import { $, formData, say } from "./page.js";
import { enc, missing } from "./portal-api.js";

export async function mount() {
  await loadKeys();
  $("keys-title").focus({ preventScroll: true });
}

async function loadKeys() {
  const { keys } = await api("/api/partner/keys");
  $("keys").replaceChildren(...keys.map((k) => {
    const usage = el("details", { class: "usage" }, el("summary", { text: "Usage, last 7 days" }),
      el("div", { class: "usage-body" }, el("p", { class: "muted small", text: "Loading…" })));
    usage.addEventListener("toggle", () => { if (usage.open) loadUsage(k, usage.querySelector(".usage-body")); });
    return el("li", { "data-key": k.key_id },
      el("div", {},
        el("strong", { text: k.name }), " ",
        el("span", { class: "chip-s", text: k.scope }),
        el("div", { class: "muted small mono",
          text: `${k.prefix}… · ${k.allowed_ips.length ? k.allowed_ips.join(", ") : "any address"}` })),
      el("button", { type: "button", text: "Revoke", onclick: () => revoke(k) }),
      usage);
  }));
  $("no-keys").hidden = keys.length > 0;
}

/** The days of a usage answer, whatever it calls them: [{date, requests, errors, p95}]. */
function days(out) {
  const rows = Array.isArray(out) ? out : out.days || out.items || out.usage || [];
  return rows.map((d) => ({
    date: d.date || d.day || "", requests: d.requests ?? d.count ?? 0, errors: d.errors ?? 0,
    p95: d.p95_ms ?? d.p95 ?? d.latency_p95_ms ?? null,
  }));
}

async function loadUsage(key, box) {
  try {
    const rows = days(await api(`/api/partner/keys/${enc(key.key_id)}/usage?days=7`));
    if (!rows.length || rows.every((r) => !r.requests)) {
      box.replaceChildren(el("p", { class: "muted small", text: "Not used in the last 7 days." }));
      return;
    }
    const max = Math.max(1, ...rows.map((r) => r.requests));
    box.replaceChildren(el("div", { class: "table-wrap" }, el("table", { class: "report-table usage-table" },
      el("thead", {}, el("tr", {}, ["Day", "Requests", "Errors", "p95", ""].map((t) => el("th", { scope: "col", text: t })))),
      el("tbody", {}, rows.map((r) => {
        const bar = el("span", { class: "bar" });
        bar.style.width = `${(100 * r.requests) / max}%`;
        return el("tr", {}, el("td", { text: r.date }), el("td", { text: String(r.requests) }),
          el("td", { text: String(r.errors) }), el("td", { text: r.p95 === null ? "–" : `${r.p95} ms` }),
          el("td", { class: "bar-cell", "aria-hidden": "true" }, bar));
      })))));
  } catch (e) {
    box.replaceChildren(el("p", { class: "note", text: missing(e)
      ? "Key usage is not available on this server yet (GET /api/partner/keys/{key_id}/usage)."
      : e.message }));
  }
}

async function revoke(key) {
  if (!confirm(`Revoke "${key.name}"? Anything using it stops working at once.`)) return;
  try {
    await api(`/api/partner/keys/${enc(key.key_id)}`, { method: "DELETE" });
    $("new-key").hidden = true;
    await loadKeys();
    say(`Key "${key.name}" revoked.`, "ok");
  } catch (e) {
    say(e.message);
  }
}

$("key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const data = formData(ev.target);
  const body = {
    name: data.name, scope: data.scope,
    allowed_ips: data.allowed_ips.split(/[\s,]+/).filter(Boolean),
  };
  try {
    const made = await api("/api/partner/keys", { method: "POST", body });
    ev.target.reset();
    $("new-key-value").textContent = made.api_key;
    $("new-key").hidden = false;
    say("");
    await loadKeys();
  } catch (e) {
    say(e.message);
  }
});
