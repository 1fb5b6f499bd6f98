// Account page: log in (with a two-factor code when the account has one), sign up, set up
// two-factor authentication (QR code), recovery codes, my bookings, export, delete.
import { api, ApiError, dayOf, el, localTime, money } from "./api.js";
import { $, formData, say } from "./page.js";

async function guarded(form, fn) {
  const button = form.querySelector("button[type=submit]");
  if (button) button.setAttribute("aria-busy", "true");
  try {
    say("");
    await fn();
  } catch (e) {
    say(e instanceof ApiError ? e.message : String(e));
  } finally {
    if (button) button.removeAttribute("aria-busy");
  }
}

function showSignedOut(mfa = false) {
  $("signed-in").hidden = true;
  $("signed-out").hidden = false;
  $("login-form").hidden = mfa;
  $("mfa-login-form").hidden = !mfa;
  if (mfa) $("mfa-login-form").elements.code.focus();
}

async function showSignedIn(me) {
  $("signed-out").hidden = true;
  $("signed-in").hidden = false;
  $("me-name").textContent = me.name;
  $("me-email").textContent = me.email;
  $("me-role").textContent = me.role;
  $("portal-link").hidden = me.role !== "partner";
  $("bookings-section").hidden = me.role !== "customer";
  $("delete-form").hidden = me.role !== "customer";
  $("delete-code").hidden = !me.mfa_enabled;
  $("mfa-status").textContent = me.mfa_enabled
    ? `On. ${me.recovery_codes_left} recovery codes left.`
    : me.mfa_setup_required
      ? "Required for your account: set it up to continue."
      : "Off. Add a code from your phone to every log-in.";
  $("mfa-start").hidden = me.mfa_enabled;
  $("profile-section").hidden = me.role !== "customer";
  if (me.role === "customer") await Promise.all([loadBookings(), loadProfile()]);
}

// Phone and ID number: encrypted at rest on the server; empty fields clear them.
async function loadProfile() {
  const profile = await api("/api/me/profile");
  const form = $("profile-form");
  form.elements.phone.value = profile.phone || "";
  form.elements.id_number.value = profile.id_number || "";
}

async function loadBookings() {
  const { bookings } = await api("/api/me/bookings");
  const list = $("bookings");
  list.replaceChildren(...bookings.map((b) => el("li", { "data-booking": b.booking_id },
    el("div", {},
      el("strong", { text: b.show ? b.show.movie_title : b.booking_id }),
      el("div", { class: "muted small", text: b.show
        ? `${b.show.theatre_name} · ${dayOf(b.show.starts_at, b.show.timezone)} ${localTime(b.show.starts_at, b.show.timezone)}` : "" }),
      el("div", { class: "small", text: `Seats ${b.seats.join(", ")} · ${money(b.amount)} · ${b.status}` }),
      b.show && b.status === "confirmed" ? reviewBox(b.show) : null),
    b.ticket ? el("a", { class: "button", href: b.ticket.svg_url, target: "_blank", rel: "noopener",
                         text: "E-ticket" }) : null)));
  $("no-bookings").hidden = bookings.length > 0;
}

// Rate the movie and the theatre of a confirmed booking (one review each, editable).
function reviewBox(show) {
  const items = [["movie", show.movie_id, show.movie_title], ["theatre", show.theatre_id, show.theatre_name]];
  const box = el("details", { class: "review small" }, el("summary", { text: "Rate and review" }));
  box.addEventListener("toggle", async () => {
    if (!box.open || box.dataset.loaded) return;
    box.dataset.loaded = "1";
    for (const [kind, id, name] of items) box.append(await reviewForm(kind, id, name));
  });
  return box;
}

async function reviewForm(kind, id, name) {
  const path = `/api/${kind}s/${encodeURIComponent(id)}/reviews/mine`;
  let mine = null;
  try { mine = (await api(path)).review; } catch (e) { if (!(e instanceof ApiError) || e.status !== 404) throw e; }
  const stars = el("select", { name: "rating", required: true, "aria-label": `Rating of ${name}` },
    [5, 4, 3, 2, 1].map((n) => el("option", { value: n, selected: mine && mine.rating === n, text: "★".repeat(n) })));
  const text = el("textarea", { name: "text", maxlength: 2000, rows: 2, placeholder: "Your review (optional)" });
  text.value = mine ? mine.text : "";
  const form = el("form", { class: "stack", "data-review": `${kind}:${id}` },
    el("label", {}, `${kind === "movie" ? "Movie" : "Theatre"}: ${name} `, stars), text,
    el("button", { type: "submit", text: mine ? "Update review" : "Post review" }));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(form, async () => {
      const { rating, text: body } = formData(form);
      const out = await api(path, { method: "PUT", body: { rating: Number(rating), text: body } });
      form.querySelector("button").textContent = "Update review";
      const avg = out.rating_summary.average;
      say(`Thanks! ${name}: ${avg === null ? "—" : avg.toFixed(1)} ★ from ${out.rating_summary.count} review(s).`, "ok");
    });
  });
  return form;
}

async function refresh() {
  try {
    await showSignedIn(await api("/api/me"));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showSignedOut();
    else say(e.message);
  }
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guarded(ev.target, async () => {
    const res = await api("/api/login", { method: "POST", body: formData(ev.target) });
    if (res.status === "mfa_required") showSignedOut(true);
    else await showSignedIn(res.user);
  });
});

$("mfa-login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guarded(ev.target, async () => {
    const code = formData(ev.target).code.trim();
    const body = /^[0-9 ]{6,8}$/.test(code) ? { code } : { recovery_code: code };
    try {
      const res = await api("/api/login/mfa", { method: "POST", body });
      ev.target.reset();
      await showSignedIn(res.user);
    } catch (e) {
      if (e.code === "login_required") showSignedOut(false);
      throw e;
    }
  });
});

$("signup-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guarded(ev.target, async () => {
    const me = await api("/api/accounts", { method: "POST", body: formData(ev.target) });
    ev.target.reset();
    await showSignedIn(me);
    say("Welcome! Your account is ready.", "ok");
  });
});

$("logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST" });
  showSignedOut();
});

$("mfa-start").addEventListener("click", async () => {
  try {
    const setup = await api("/api/me/mfa", { method: "POST" });
    $("mfa-qr").src = "data:image/svg+xml;base64," + btoa(setup.qr_svg);
    $("mfa-secret").textContent = setup.secret;
    $("mfa-setup").hidden = false;
    $("mfa-start").hidden = true;
    $("mfa-verify-form").elements.code.focus();
  } catch (e) {
    say(e.message);
  }
});

$("mfa-verify-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guarded(ev.target, async () => {
    const res = await api("/api/me/mfa/verify", { method: "POST", body: formData(ev.target) });
    ev.target.reset();
    $("mfa-setup").hidden = true;
    $("recovery-codes").replaceChildren(...res.recovery_codes.map((c) => el("li", { text: c })));
    $("recovery").hidden = false;
    await showSignedIn(res.user);
    say("Two-factor authentication is on.", "ok");
  });
});

$("profile-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.currentTarget;
  guarded(form, async () => {
    const v = formData(form);
    await api("/api/me/profile", { method: "PUT", body: {
      phone: v.phone.trim() || null, id_number: v.id_number.trim() || null } });
    await loadProfile();
    say("Contact details saved.", "ok");
  });
});

$("delete-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!confirm("Delete your account? This cannot be undone.")) return;
  guarded(ev.target, async () => {
    const data = formData(ev.target);
    const body = { password: data.password };
    if (data.code) body.code = data.code.trim();
    await api("/api/me", { method: "DELETE", body });
    ev.target.reset();
    showSignedOut();
    say("Your account was deleted.", "ok");
  });
});

refresh();
