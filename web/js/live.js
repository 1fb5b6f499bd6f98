// The live seat map socket: applies snapshots and `events` frames (each one or more log
// entries) in seq order, reconnects with
// `since` (the last seq applied) so a dropped connection never needs a page reload.
//
//   const live = new LiveSeats(showId, seq, { onSnapshot(seats, seq), onChanges(changes, seq),
//                                             onState("live" | "connecting" | "offline") });
//   live.start(); ... live.stop();

export class LiveSeats {
  constructor(showId, seq, handlers) {
    this.showId = showId;
    this.seq = seq;            // the last seq applied to the page's statuses
    this.h = handlers;
    this.ws = null;
    this.delay = 500;
    this.stopped = false;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
    // Coming back online or to the tab: reconnect now rather than wait for the back-off.
    this._kick = () => { if (!this.ws && !this.stopped) { clearTimeout(this.timer); this.connect(); } };
    window.addEventListener("online", this._kick);
    document.addEventListener("visibilitychange", this._kick);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener("online", this._kick);
    document.removeEventListener("visibilitychange", this._kick);
    if (this.ws) this.ws.close(1000);
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const since = this.seq === null || this.seq === undefined ? "" : `?since=${this.seq}`;
    return `${proto}//${location.host}/api/shows/${encodeURIComponent(this.showId)}/live${since}`;
  }

  connect() {
    this.h.onState?.("connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => { this.delay = 500; this.h.onState?.("live"); };
    ws.onmessage = (ev) => this.receive(ws, ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      this.h.onState?.("offline");
      if (ev.code === 1008 || ev.code === 4404) return; // not coming back
      // A resync close (4000) reconnects at once; other drops back off a little.
      const wait = ev.code === 4000 ? 0 : this.delay;
      this.delay = Math.min(this.delay * 2, 8000);
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  receive(ws, data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === "snapshot") {
      this.seq = msg.seq;
      this.h.onSnapshot?.(msg.seats, msg.seq);
    } else if (msg.type === "events") {
      // One frame, one or more consecutive log entries (the server batches under load).
      for (const ev of msg.events) {
        if (this.seq !== null && ev.seq <= this.seq) continue;   // seen already
        if (this.seq !== null && ev.seq !== this.seq + 1) {
          ws.close(4001, "gap");  // never apply out of order: resume from what we have
          return;
        }
        this.seq = ev.seq;
        this.h.onChanges?.(ev.changes, ev.seq);
      }
    } else if (msg.type === "resync") {
      // The server closes right after; onclose reconnects with since=seq.
    }
  }
}
