// Partner page: the onboarding request for newcomers; for a logged-in partner with
// two-factor authentication, the portal: its API keys (create with name, scope and
// allowed addresses; revoke).
import { api, ApiError, el } from "./api.js";
import { $, formData, say } from "./page.js";

function show(id) {
  for (const s of ["apply", "needs-mfa", "portal"]) $(s).hidden = s !== id;
}

async function loadKeys() {
  const { keys } = await api("/api/partner/keys");
  $("keys").replaceChildren(...keys.map((k) => el("li", { "data-key": k.key_id },
    el("div", {},
      el("strong", { text: k.name }), " ",
      el("span", { class: "chip", text: k.scope }),
      el("div", { class: "muted small mono",
                  text: `${k.prefix}… · ${k.allowed_ips.length ? k.allowed_ips.join(", ") : "any address"}` })),
    el("button", { type: "button", text: "Revoke", onclick: () => revoke(k) }))));
  $("no-keys").hidden = keys.length > 0;
}

async function revoke(key) {
  if (!confirm(`Revoke "${key.name}"? Anything using it stops working at once.`)) return;
  try {
    await api(`/api/partner/keys/${encodeURIComponent(key.key_id)}`, { method: "DELETE" });
    $("new-key").hidden = true;
    await loadKeys();
    say(`Key "${key.name}" revoked.`, "ok");
  } catch (e) {
    say(e.message);
  }
}

async function start() {
  try {
    const account = await api("/api/partner/account");
    $("partner-name").textContent = account.name;
    $("partner-id").textContent = account.partner_id;
    show("portal");
    await loadKeys();
  } catch (e) {
    if (e instanceof ApiError && e.code === "mfa_required") show("needs-mfa");
    else show("apply");
  }
}

$("request-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = formData(ev.target);
  try {
    const req = await api("/api/partner-requests", { method: "POST", body });
    ev.target.reset();
    say(`Thank you: request ${req.request_id} is waiting for review. We will e-mail you.`, "ok");
  } catch (e) {
    say(e.message);
  }
});

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

start();
