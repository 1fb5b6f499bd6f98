// The waiting room on the show page (issue 7). When the show is on sale through a queue,
// the seat map stays hidden while this visitor waits; the position comes live over a
// WebSocket (polling if that fails), and on admission the server sets the admission
// cookie (GET .../queue) that the hold API checks, and the seat map is shown.
import { api } from "./api.js";

const $ = (id) => document.getElementById(id);
const showId = new URLSearchParams(location.search).get("show");
const base = showId ? `/api/shows/${encodeURIComponent(showId)}/queue` : null;
const POLL_MS = 2000;

function waiting(on) {
  document.body.classList.toggle("queued", on);
  $("queue-panel").hidden = !on;
}

function showPosition(position, eta) {
  $("queue-position").textContent = position === 1
    ? "You are next" : `Your place in the queue: ${position}`;
  $("queue-position").dataset.position = String(position);
  $("queue-eta").textContent = eta ? `About ${eta} s to go` : "";
}

async function admit() {
  const st = await api(base); // sets the admission cookie for this show's hold API
  if (st.on_sale && !st.admitted) return follow(st);
  $("queue-position").textContent = "It's your turn";
  $("queue-position").dataset.position = "0";
  document.body.dataset.admitted = "true";
  waiting(false);
}

function poll() {
  setTimeout(async () => {
    try {
      const st = await api(base);
      if (!st.on_sale || st.admitted) return admit();
      if (!st.in_queue) return follow(await api(base, { method: "POST" }));
      showPosition(st.position, st.eta_seconds);
    } catch { /* try again */ }
    poll();
  }, POLL_MS);
}

function follow(st) {
  if (!st.on_sale || st.admitted) return admit();
  waiting(true);
  showPosition(st.position, st.eta_seconds);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${base}/live`);
  let done = false;
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "position") showPosition(msg.position, msg.eta_seconds);
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
  follow(st.in_queue ? st : await api(base, { method: "POST" }));
}

start();
