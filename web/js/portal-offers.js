// Portal: offers (automatic discounts) and promo codes, with their usage
// (/partner/v1/offers, /partner/v1/promo-codes; disable, never delete).
import { $, say } from "./page.js";
import { el, enc, get, send, toMinor, values } from "./portal-api.js";

const list = (text) => String(text || "").split(",").map((s) => s.trim()).filter(Boolean);

function scopeText(scope) {
  if (!scope) return "all your shows";
  const parts = [];
  if (scope.categories && scope.categories.length) parts.push(scope.categories.join(", "));
  if (scope.weekdays && scope.weekdays.length) parts.push(scope.weekdays.join(" "));
  if (scope.dates_from || scope.dates_to) parts.push(`${scope.dates_from || "…"} to ${scope.dates_to || "…"}`);
  if (scope.theatre_ids && scope.theatre_ids.length) parts.push(`${scope.theatre_ids.length} theatres`);
  if (scope.movie_ids && scope.movie_ids.length) parts.push(`${scope.movie_ids.length} movies`);
  return parts.join(" · ") || "all your shows";
}

function ordinal(n) {
  const teen = n % 100 >= 11 && n % 100 <= 13;
  return `${n}${teen ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th")}`;
}

function ruleText(rule) {
  if (rule.type === "nth_ticket") return `${rule.percent_off} % off every ${ordinal(rule.n)} ticket`;
  if (rule.type === "time_window") return `${rule.percent_off} % off shows starting ${rule.start}–${rule.end}`;
  return JSON.stringify(rule);
}

export async function mount() {
  ruleFields();
  kindFields();
  await Promise.all([loadOffers(), loadPromos()]);
  $("offers-title").focus({ preventScroll: true });
}

async function loadOffers() {
  const { offers } = await get("/partner/v1/offers");
  $("offers").replaceChildren(...offers.map((o) => el("li", { "data-offer": o.offer_id, class: o.active ? "" : "inactive" },
    el("div", { class: "item-head" },
      el("div", {},
        el("strong", { text: o.name }), " ", el("span", { class: "chip-s", text: o.active ? "active" : "disabled" }),
        el("div", { class: "small", text: ruleText(o.rule) }),
        el("div", { class: "muted small", text: scopeText(o.scope) })),
      o.active ? el("button", { type: "button", text: "Disable", onclick: (ev) => disable("offers", o.offer_id, o.name, ev.target) }) : null))));
  $("no-offers").hidden = offers.length > 0;
}

async function loadPromos() {
  const { promo_codes: promos } = await get("/partner/v1/promo-codes");
  $("promos").replaceChildren(...promos.map(({ promo: p, used, reserved }) => el("li", { "data-promo": p.code, class: p.active ? "" : "inactive" },
    el("div", { class: "item-head" },
      el("div", {},
        el("strong", { class: "mono", text: p.code }), " ", el("span", { text: p.name }), " ",
        el("span", { class: "chip-s", text: p.active ? "active" : "disabled" }),
        el("div", { class: "small", text: p.percent_off ? `${p.percent_off} % off` : `${p.amount_off} (minor units) off per ticket` }),
        el("div", { class: "muted small", text: `Used ${used}${p.max_uses ? ` of ${p.max_uses}` : ""}; ${reserved} reserved by holds now · ${scopeText(p.scope)}` })),
      p.active ? el("button", { type: "button", text: "Disable", onclick: (ev) => disable("promo-codes", p.code, p.code, ev.target) }) : null))));
  $("no-promos").hidden = promos.length > 0;
}

async function disable(kind, id, name, button) {
  if (!confirm(`Disable "${name}"? New holds no longer get it; holds already priced keep their price.`)) return;
  button.disabled = true;
  try {
    await send("POST", `/partner/v1/${kind}/${enc(id)}/disable`);
    await (kind === "offers" ? loadOffers() : loadPromos());
    say(`"${name}" disabled.`, "ok");
  } catch (e) {
    say(e.message);
    button.disabled = false;
  }
}

function ruleFields() {
  const type = $("offer-form").elements.type.value;
  for (const l of $("offer-form").querySelectorAll("[data-rule]")) l.hidden = l.dataset.rule !== type;
}

function kindFields() {
  const kind = $("promo-form").elements.kind.value;
  for (const l of $("promo-form").querySelectorAll("[data-kind]")) l.hidden = l.dataset.kind !== kind;
}

$("offer-form").elements.type.addEventListener("change", ruleFields);
$("promo-form").elements.kind.addEventListener("change", kindFields);

function scopeOf(v) {
  const scope = {};
  if (list(v.categories).length) scope.categories = list(v.categories);
  const days = [].concat(v.weekdays || []);
  if (days.length) scope.weekdays = days;
  if (v.dates_from) scope.dates_from = v.dates_from;
  if (v.dates_to) scope.dates_to = v.dates_to;
  return scope;
}

$("offer-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  const rule = v.type === "nth_ticket"
    ? { type: "nth_ticket", n: Number(v.n), percent_off: Number(v.percent_off) }
    : { type: "time_window", start: v.start, end: v.end, percent_off: Number(v.percent_off) };
  try {
    const offer = await send("POST", "/partner/v1/offers", { name: v.name.trim(), rule, scope: scopeOf(v) });
    ev.target.reset();
    ruleFields();
    await loadOffers();
    say(`Offer "${offer.name}" created.`, "ok");
  } catch (e) {
    say(e.message);
  }
});

function instant(local) {
  return local ? new Date(local).toISOString() : undefined;  // the reader's clock
}

$("promo-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = values(ev.target);
  const body = { code: v.code.trim(), name: v.name.trim() };
  if (v.kind === "percent") body.percent_off = Number(v.value);
  else {
    const amount = toMinor(v.value, (v.currency || "INR").toUpperCase());
    if (!amount) { say("Give the amount off, e.g. 50."); return; }
    body.amount_off = amount;
  }
  if (v.max_uses) body.max_uses = Number(v.max_uses);
  if (v.max_uses_per_customer) body.max_uses_per_customer = Number(v.max_uses_per_customer);
  if (v.valid_from) body.valid_from = instant(v.valid_from);
  if (v.valid_until) body.valid_until = instant(v.valid_until);
  try {
    const out = await send("POST", "/partner/v1/promo-codes", body);
    ev.target.reset();
    kindFields();
    await loadPromos();
    say(`Promo code ${out.promo.code} created.`, "ok");
  } catch (e) {
    say(e.message);
  }
});
