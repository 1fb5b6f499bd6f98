// Partner page: the onboarding request for newcomers; for a logged-in partner with
// two-factor authentication, the portal, which runs a theatre from the browser with the
// same /partner/v1 endpoints integrations use (the session cookie stands in for a key):
//
//   #/theatres            theatres and their screens (portal-catalog.js)
//   #/screen/<id>         a screen and its seat layout (portal-screen.js, layout-editor.js)
//   #/screen/new/<th>     a new screen in theatre <th>
//   #/movies              movies (portal-catalog.js)
//   #/schedule/<screen>/<YYYY-MM-DD>   a week of shows on a screen (portal-schedule.js)
//   #/show/<id>           one show: live sales, house seats, waiting room (portal-show.js)
//   #/offers              offers and promo codes (portal-offers.js)
//   #/webhooks            webhooks and their delivery log (portal-webhooks.js)
//   #/keys                API keys and their usage (portal-keys.js)
import { api, ApiError } from "./api.js";
import { $, formData, say } from "./page.js";
import { setPartner } from "./portal-api.js";
import * as catalog from "./portal-catalog.js";
import * as screen from "./portal-screen.js";
import * as schedule from "./portal-schedule.js";
import * as showView from "./portal-show.js";
import * as offers from "./portal-offers.js";
import * as webhooks from "./portal-webhooks.js";
import * as keys from "./portal-keys.js";

const VIEWS = {
  theatres: { section: "view-theatres", nav: "theatres", mount: catalog.mountTheatres },
  screen: { section: "view-screen", nav: "theatres", mount: screen.mount },
  movies: { section: "view-movies", nav: "movies", mount: catalog.mountMovies },
  schedule: { section: "view-schedule", nav: "schedule", mount: schedule.mount },
  show: { section: "view-show", nav: "schedule", mount: showView.mount },
  offers: { section: "view-offers", nav: "offers", mount: offers.mount },
  webhooks: { section: "view-webhooks", nav: "webhooks", mount: webhooks.mount },
  keys: { section: "view-keys", nav: "keys", mount: keys.mount },
};

const portal = { account: null, cleanup: null, dirty: null, hash: "" };
window.bmmPortal = portal; // a handle for debugging in the console (and for the browser tests)

/** Change the address without leaving the view (a new record got its id). */
portal.replace = (hash) => {
  history.replaceState(null, "", hash);
  portal.hash = location.hash;
};

function show(id) {
  for (const s of ["apply", "needs-mfa", "portal"]) $(s).hidden = s !== id;
}

/** The hash "#/schedule/sc-1/2025-03-03" as ["schedule", "sc-1", "2025-03-03"]. */
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return VIEWS[parts[0]] ? parts : ["theatres"];
}

async function navigate() {
  const [name, ...params] = route();
  const view = VIEWS[name];
  if (location.hash === portal.hash && portal.ready) return;
  if (portal.dirty && portal.dirty()
      && !confirm("You have unsaved changes here. Leave without saving them?")) {
    history.replaceState(null, "", portal.hash || "#/theatres");  // stay
    return;
  }
  if (portal.cleanup) { try { portal.cleanup(); } catch { /* ignore */ } }
  portal.cleanup = null;
  portal.dirty = null;
  portal.hash = location.hash;
  portal.ready = "";
  say("");
  for (const v of Object.values(VIEWS)) $(v.section).hidden = v.section !== view.section;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view.nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  portal.view = name;
  try {
    const out = await view.mount(params, portal);
    if (typeof out === "function") portal.cleanup = out;
    else if (out) { portal.cleanup = out.cleanup || null; portal.dirty = out.dirty || null; }
  } catch (e) {
    say(e instanceof ApiError ? e.message : String(e));
  }
  portal.ready = name;
  document.body.dataset.view = name;
}

async function start() {
  let account;
  try {
    account = await api("/api/partner/account");
  } catch (e) {
    if (e instanceof ApiError && e.code === "mfa_required") show("needs-mfa");
    else show("apply");
    return;
  }
  portal.account = account;
  setPartner(account.partner_id);
  $("partner-name").textContent = account.name;
  $("partner-id").textContent = account.partner_id;
  show("portal");
  window.addEventListener("hashchange", navigate);
  window.addEventListener("beforeunload", (ev) => {
    if (portal.dirty && portal.dirty()) { ev.preventDefault(); ev.returnValue = ""; }
  });
  await navigate();
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

start();
