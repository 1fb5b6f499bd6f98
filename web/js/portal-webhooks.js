// Portal: webhooks (register, delete) and each one's delivery log, with resending one
// delivery (POST /partner/v1/webhooks/{id}/deliveries/{delivery_id}/resend).
import { $, say } from "./page.js";
import { el, enc, get, missing, send, values } from "./portal-api.js";

const when = (iso) => (iso ? new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" }).format(new Date(iso)) : "");

export async function mount() {
  $("new-secret").hidden = true;
  await loadWebhooks();
  $("webhooks-title").focus({ preventScroll: true });
}

async function loadWebhooks() {
  const page = await get("/partner/v1/webhooks?limit=200");
  const webhooks = page.items || page.webhooks || [];
  $("webhooks").replaceChildren(...webhooks.map((w) => {
    const log = el("details", { class: "deliveries" }, el("summary", { text: "Delivery log" }),
      el("div", { class: "log-body" }, el("p", { class: "muted small", text: "Loading…" })));
    log.addEventListener("toggle", () => { if (log.open) loadLog(w, log.querySelector(".log-body")); });
    return el("li", { "data-webhook": w.webhook_id },
      el("div", { class: "item-head" },
        el("div", {},
          el("strong", { class: "mono", text: w.url }),
          el("div", { class: "muted small", text: `${w.events.join(", ")}${w.description ? ` · ${w.description}` : ""}` })),
        el("button", { type: "button", class: "ghost", text: "Delete", onclick: (ev) => remove(w, ev.target) })),
      log);
  }));
  $("no-webhooks").hidden = webhooks.length > 0;
}

async function loadLog(w, box) {
  try {
    const page = await get(`/partner/v1/webhooks/${enc(w.webhook_id)}/deliveries?limit=50`);
    const deliveries = page.items || page.deliveries || [];
    const refresh = el("button", { type: "button", class: "small", text: "Refresh",
      onclick: () => loadLog(w, box) });
    if (!deliveries.length) {
      box.replaceChildren(el("p", { class: "muted small" }, "Nothing sent yet. ", refresh));
      return;
    }
    box.replaceChildren(refresh, el("div", { class: "table-wrap" }, el("table", { class: "report-table log" },
      el("thead", {}, el("tr", {}, ["When", "Event", "Status", "Attempts", "Last answer", "Next retry", ""].map((t) => el("th", { scope: "col", text: t })))),
      el("tbody", {}, deliveries.map((d) => {
        const last = d.attempts[d.attempts.length - 1];
        const answer = last ? (last.status_code ? `HTTP ${last.status_code}` : last.error || "no answer") + ` · ${last.duration_ms} ms` : "–";
        const excerpt = last && last.response_excerpt
          ? el("details", { class: "excerpt" }, el("summary", { text: "answer" }), el("pre", { class: "mono", text: last.response_excerpt }))
          : null;
        return el("tr", { "data-delivery": d.delivery_id },
          el("td", { text: when(d.created_at) }),
          el("td", {}, el("span", { class: "mono", text: d.event_type }),
            d.resend_of ? el("div", { class: "muted small", text: "a resend" }) : null),
          el("td", {}, el("span", { class: `status st-${d.status}`, text: d.status })),
          el("td", { text: String(d.attempts.length) }), el("td", {}, answer, excerpt),
          el("td", { text: when(d.next_retry_at) || "–" }),
          el("td", {}, el("button", { type: "button", text: "Resend", "aria-label": `Resend ${d.event_type} of ${when(d.created_at)}`,
            onclick: (ev) => resend(w, d, ev.target, box) })));
      })))));
  } catch (e) {
    box.replaceChildren(el("p", { class: "note", text: e.message }));
  }
}

async function resend(w, d, button, box) {
  button.disabled = true;
  try {
    await send("POST", `/partner/v1/webhooks/${enc(w.webhook_id)}/deliveries/${enc(d.delivery_id)}/resend`);
    await loadLog(w, box);
    say(`${d.event_type} queued to be sent again.`, "ok");
  } catch (e) {
    say(missing(e) ? "Resending is not available on this server yet "
      + "(POST /partner/v1/webhooks/{id}/deliveries/{delivery_id}/resend)." : e.message,
    missing(e) ? "info" : "error");
    button.disabled = false;
  }
}

async function remove(w, button) {
  if (!confirm(`Delete the webhook to ${w.url}? Deliveries waiting for it are dropped.`)) return;
  button.disabled = true;
  try {
    await send("DELETE", `/partner/v1/webhooks/${enc(w.webhook_id)}`);
    await loadWebhooks();
    say("Webhook deleted.", "ok");
  } catch (e) {
    say(e.message);
    button.disabled = false;
  }
}

$("webhook-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  const events = [].concat(v.events || []);
  if (!events.length) { say("Pick at least one event."); return; }
  try {
    const made = await send("POST", "/partner/v1/webhooks", { url: v.url.trim(), events, description: v.description.trim() });
    ev.target.reset();
    $("new-secret-value").textContent = made.secret;
    $("new-secret").hidden = false;
    await loadWebhooks();
    say("Webhook added: copy its signing secret now.", "ok");
  } catch (e) {
    say(e.message);
  }
});
