// The waiting room on the show page (issues 7 and 15). When the show is on sale through a
// queue, the seat map stays hidden while this visitor waits. Joining costs a small proof
// of work, solved here (pow.js). Before the sale opens the visitor is in the pre-queue
// (everyone in it gets a random place at the start); then the position comes live over a
// WebSocket (polling if that fails), and on admission the server sets the admission
// cookie (GET .../queue) that the hold API checks, and the seat map is shown.
import { api } from "./api.js";
import { payload, solve } from "./pow.js";

const $ = (id) => document.getElementById(id);
const showId = new URLSearchParams(location.search).get("show");
const base = showId ? `/api/shows/${encodeURIComponent(showId)}/queue` : null;
const POLL_MS = 2000;
const RETRY_MS = 3000;

function waiting(on) {
  document.body.classList.toggle("queued", on);
  $("queue-panel").hidden = !on;
}

function say(heading, text, detail = "") {
  $("queue-heading").textContent = heading;
  $("queue-position").textContent = text;
  $("queue-eta").textContent = detail;
}

function when(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function showPrequeue(opensAt) {
  const pos = $("queue-position");
  delete pos.dataset.position;
  pos.dataset.prequeue = "true";
  pos.dataset.opensAt = opensAt || "";
  say("You are in the pre-queue",
    opensAt ? `The sale opens at ${when(opensAt)}` : "The sale opens soon",
    "Everyone in the pre-queue gets a random place in the queue when the sale opens: " +
    "it does not matter when you joined. Keep this page open.");
}

function showPosition(position, eta) {
  const pos = $("queue-position");
  pos.dataset.prequeue = "false";
  pos.dataset.position = String(position);
  let wait = "";
  if (eta) wait = eta < 90 ? `About ${eta} s to go` : `About ${Math.round(eta / 60)} min to go`;
  say("You are in the queue",
    position === 1 ? "You are next" : `Your place in the queue: ${position}`, wait);
}

function showStatus(st) {
  if (st.pre_queue) showPrequeue(st.opens_at);
  else showPosition(st.position, st.eta_seconds);
}

// Solve a fresh challenge and join; a refused solution (expired meanwhile, used by a
// second tab) is retried with a new challenge.
async function join() {
  const pos = $("queue-position");
  pos.dataset.state = "solving";
  say("Joining the queue", "Checking your browser…");
  try {
    for (let attempt = 1; ; attempt++) {
      const ch = await api(`${base}/challenge`);
      const number = await solve(ch);
      try {
        return await api(base, { method: "POST", body: { altcha: payload(ch, number) } });
      } catch (e) {
        if (attempt >= 3 || !String(e.code).startsWith("challenge_")) throw e;
      }
    }
  } finally {
    delete pos.dataset.state;
  }
}

async function admit() {
  const st = await api(base); // sets the admission cookie for this show's hold API
  if (st.on_sale && !st.admitted) return follow(st.in_queue ? st : await join());
  $("queue-position").textContent = "It's your turn";
  $("queue-position").dataset.position = "0";
  $("queue-position").dataset.prequeue = "false";
  document.body.dataset.admitted = "true";
  waiting(false);
}

function poll() {
  setTimeout(async () => {
    try {
      const st = await api(base);
      if (!st.on_sale || st.admitted) return await admit();
      if (!st.in_queue) return follow(await join());
      showStatus(st);
    } catch { /* try again */ }
    poll();
  }, POLL_MS);
}

function follow(st) {
  if (!st.on_sale || st.admitted) return admit();
  waiting(true);
  showStatus(st);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${base}/live`);
  let done = false;
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "prequeue") showPrequeue(msg.opens_at);
    else if (msg.type === "position") showPosition(msg.position, msg.eta_seconds);
    else if (msg.type === "admitted" || msg.type === "closed") { done = true; admit(); }
  };
  ws.onclose = () => { if (!done) poll(); };
}

async function start() {
  if (!base) return;
  let st;
  try {
    st = await api(base);
  } catch {
    return; // unknown show: the page says so already
  }
  if (!st.on_sale) return;
  if (st.admitted) return admit();
  waiting(true);
  for (;;) {
    try {
      return follow(st.in_queue ? st : await join());
    } catch (e) {
      say("Joining the queue", "Could not join the queue yet", `${e.message}: trying again…`);
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
}

start();
