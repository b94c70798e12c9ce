// The console's entry module: signing in and out (the token lives in
// sessionStorage; a `#token=…` link is read once and removed from the
// address bar), the namespace picker, the hash router (`#/channels`,
// `#/events/ID`, …) and the message areas. Each page is a module whose
// render(ctx) fetches what it shows and builds it with dom.js; this module
// owns what they share.

import { call, session, onUnauthorized, ApiError } from "./api.js";
import { h } from "./dom.js";
import { renderSignIn } from "./signin.js";
import { renderOverview } from "./overview.js";
import { renderChannels } from "./channels.js";
import { renderChannel } from "./channel.js";
import { renderEvents } from "./events.js";
import { renderEvent } from "./event.js";
import { renderRecover } from "./recover.js";
import { renderSubscriptions } from "./subscriptions.js";
import { renderSubscription } from "./subscription.js";
import { renderEventTypes } from "./eventtypes.js";
import { renderEventType } from "./eventtype.js";

const ROUTES = [
  { pattern: /^$/, page: "overview", render: renderOverview },
  { pattern: /^channels$/, page: "channels", render: renderChannels },
  { pattern: /^channels\/([^/]+)$/, page: "channels", render: renderChannel },
  { pattern: /^subscriptions$/, page: "subscriptions", render: renderSubscriptions },
  { pattern: /^subscriptions\/([^/]+)$/, page: "subscriptions", render: renderSubscription },
  { pattern: /^event-types$/, page: "event-types", render: renderEventTypes },
  { pattern: /^event-types\/([^/]+)$/, page: "event-types", render: renderEventType },
  { pattern: /^events$/, page: "events", render: renderEvents },
  { pattern: /^events\/([^/]+)$/, page: "events", render: renderEvent },
  { pattern: /^recover$/, page: "recover", render: renderRecover },
];

const $ = (id) => document.getElementById(id);

const state = {
  me: null, // GET /v1/token while signed in
  namespaces: [],
  generation: 0, // bumped on every render; stale async work checks it
  cleanups: [],
  pendingNotice: null,
};

// --- messages --------------------------------------------------------------

function showError(err) {
  const box = $("error");
  const status = err instanceof ApiError && err.status ? `Refused (HTTP ${err.status}): ` : "Error: ";
  box.replaceChildren(h("strong", {}, status), err.message || String(err));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function showNotice(...content) {
  const box = $("notice");
  box.replaceChildren(...content.flat(Infinity).map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  box.hidden = false;
}

function clearNotice() {
  $("notice").hidden = true;
  $("notice").replaceChildren();
}

// --- signing in and out ----------------------------------------------------

// A link made for a customer carries the token in the fragment, which never
// reaches a server; it is moved to sessionStorage and removed from the
// address bar (and from this history entry) at once. A link opened while
// another token is signed in asks first: a link someone else sent must not
// silently swap the session (the user would then act as that token).
// Returns "taken", "ask" (the page asking was shown) or "none".
function takeTokenFromAddress() {
  if (!location.hash.startsWith("#token=")) return "none";
  const token = (new URLSearchParams(location.hash.slice(1)).get("token") || "").trim();
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  if (!token) return "none";
  if (session.token && session.token !== token) {
    askBeforeReplacing(token);
    return "ask";
  }
  session.clear();
  session.token = token;
  return "taken";
}

// The question a link opened during a session asks; the link's token is
// kept in memory only until it is answered.
function askBeforeReplacing(token) {
  runCleanups();
  state.generation++;
  clearNotice();
  clearError();
  const keep = h("button", { type: "button", id: "link-keep", class: "primary" }, "Keep my session");
  const take = h("button", { type: "button", id: "link-accept" }, "Sign in with the link's token");
  keep.addEventListener("click", () => (state.me ? route(true) : signIn()));
  take.addEventListener("click", () => {
    session.clear();
    session.token = token;
    signIn();
  });
  document.title = "Replace your session? · notification-reconciler";
  document.body.dataset.rendered = "link";
  $("main").replaceChildren(
    h("h1", { tabindex: "-1" }, "Replace your session?"),
    h("p", {}, "This link signs in with another access token. Signing in with it ends the session open in this tab, " +
      "and what you do next is done with the link's token. Only continue if you expected this link."),
    h("p", { class: "links", id: "link-question" }, keep, " ", take));
  keep.focus();
}

function showSignIn(message) {
  runCleanups();
  state.generation++;
  state.me = null;
  $("nav").hidden = true;
  $("session").hidden = true;
  clearNotice();
  if (message) showError({ message });
  else clearError();
  document.title = "Sign in · notification-reconciler";
  document.body.dataset.rendered = "signin";
  renderSignIn($("main"), (token) => {
    clearError();
    session.clear();
    session.token = token;
    signIn();
  });
}

function signOut(message) {
  session.clear();
  showSignIn(message);
}

async function signIn() {
  try {
    const me = await call("GET", "/token");
    const namespaces = me.namespace ? [me.namespace] : (await call("GET", "/namespaces")).items;
    state.me = me;
    state.namespaces = namespaces;
  } catch (err) {
    // A 401 has already returned to the sign-in page with its message.
    if (err.status !== 401) signOut(`Cannot sign in: ${err.message}`);
    return;
  }
  const saved = session.namespace;
  if (state.me.namespace) session.namespace = state.me.namespace;
  else if (!saved || !state.namespaces.includes(saved)) session.namespace = state.namespaces[0] || "";
  renderSession();
  route(true);
}

function renderSession() {
  const me = state.me;
  $("nav").hidden = false;
  $("session").hidden = false;
  const input = $("namespace");
  input.value = session.namespace || "";
  input.readOnly = Boolean(me.namespace);
  input.placeholder = me.namespace ? "" : "type a namespace";
  $("namespaces").replaceChildren(...state.namespaces.map((ns) => h("option", { value: ns })));
  const tags = [];
  if (me.admin) tags.push(h("span", { class: "tag" }, "admin"));
  if (me.read_only) tags.push(h("span", { class: "tag tag-ro" }, "read-only"));
  $("who").replaceChildren("Token ", h("strong", {}, me.name), " ", ...tags,
    me.expires_at ? h("span", { class: "muted" }, ` expires ${new Date(me.expires_at).toLocaleString()}`) : "");
}

function switchNamespace() {
  const input = $("namespace");
  const ns = input.value.trim();
  if (state.me.namespace || !ns) {
    input.value = session.namespace || "";
    return;
  }
  if (ns === session.namespace) return;
  session.namespace = ns;
  // A detail page belongs to the old namespace: go to its section's list.
  const section = parseHash().path.split("/")[0];
  const target = `#/${section}`;
  if (location.hash === target) route(true);
  else location.hash = target;
}

// --- routing ---------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const at = raw.indexOf("?");
  const path = (at < 0 ? raw : raw.slice(0, at)).replace(/\/+$/, "");
  const params = new URLSearchParams(at < 0 ? "" : raw.slice(at + 1));
  return { path, params };
}

function runCleanups() {
  for (const fn of state.cleanups.splice(0)) fn();
}

async function route(navigated) {
  if (!state.me) return;
  runCleanups();
  const generation = ++state.generation;
  const current = () => generation === state.generation;
  if (navigated) {
    clearError();
    if (state.pendingNotice) showNotice(...state.pendingNotice);
    else clearNotice();
    state.pendingNotice = null;
  }
  const { path, params } = parseHash();
  const main = $("main");
  // Tests (and anyone curious) can tell when this address is fully shown.
  delete document.body.dataset.rendered;
  const found = ROUTES.map((r) => [r, path.match(r.pattern)]).find(([, m]) => m);
  for (const link of $("nav").querySelectorAll("a")) {
    if (found && link.dataset.page === found[0].page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const ns = session.namespace || "";
  if (!found) {
    main.replaceChildren(h("h1", { tabindex: "-1" }, "No such page"), h("p", {}, h("a", { href: "#/" }, "Go to the overview")));
    document.body.dataset.rendered = location.hash;
    return;
  }
  const [r, match] = found;
  if (!ns) {
    main.replaceChildren(h("h1", { tabindex: "-1" }, "Pick a namespace"),
      h("p", {}, "Type a namespace in the box at the top to see its channels and events."));
    document.body.dataset.rendered = location.hash;
    return;
  }
  const ctx = {
    main,
    me: state.me,
    ns,
    params,
    args: match.slice(1).map((a) => decodeURIComponent(a)),
    canWrite: !state.me.read_only,
    current,
    // Replaces the page with `nodes` if this render is still the current one.
    show(...nodes) {
      if (!current()) return;
      // Through h(), so that null parts (a section left out) add nothing
      // rather than the text "null".
      main.replaceChildren(...h("div", {}, ...nodes).childNodes);
      const title = main.querySelector("h1");
      document.title = `${title ? title.textContent : "Console"} · ${ns} · notification-reconciler`;
    },
    error: (err) => { if (current() && err.status !== 401) showError(err); },
    notice: (...content) => { if (current()) showNotice(...content); },
    // Navigates to `hash`, showing `notice` on the page it opens.
    go(hash, ...notice) {
      state.pendingNotice = notice.length ? notice : null;
      if (location.hash === hash) route(true);
      else location.hash = hash;
    },
    // Renders this page again, keeping the messages.
    refresh: () => { if (current()) route(false); },
    // Calls `fn` after `ms`, again and again while this page is shown.
    repeat(ms, fn) {
      let timer = null;
      const tick = async () => {
        if (!current()) return;
        try { await fn(); } catch (err) { ctx.error(err); }
        if (current()) timer = setTimeout(tick, ms);
      };
      timer = setTimeout(tick, ms);
      state.cleanups.push(() => clearTimeout(timer));
    },
    // Runs the action `fn` for `button`: clears the messages, disables the
    // button meanwhile, shows the API's message if it is refused.
    async run(button, fn) {
      clearError();
      clearNotice();
      if (button) button.disabled = true;
      try {
        await fn();
      } catch (err) {
        ctx.error(err);
      } finally {
        if (button) button.disabled = false;
      }
    },
  };
  if (navigated) main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await r.render(ctx);
  } catch (err) {
    if (!current()) return;
    ctx.error(err);
    if (err.status !== 401) {
      main.replaceChildren(h("h1", { tabindex: "-1" }, "Cannot show this page"), h("p", {}, err.message));
    }
  }
  if (current()) document.body.dataset.rendered = location.hash;
  if (navigated && current()) {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    }
  }
}

// --- start -------------------------------------------------------------------

function start() {
  onUnauthorized((err) => signOut(state.me ? `Signed out: ${err.message}` : `Sign-in refused: ${err.message}`));
  $("signout").addEventListener("click", () => signOut(null));
  $("skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("main").focus();
  });
  $("namespace-form").addEventListener("submit", (e) => {
    e.preventDefault();
    switchNamespace();
  });
  $("namespace").addEventListener("change", switchNamespace);
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#token=")) {
      const taken = takeTokenFromAddress();
      if (taken === "taken") signIn();
      else if (taken === "none" && state.me) route(true);
    } else {
      route(true);
    }
  });
  const taken = takeTokenFromAddress();
  if (taken === "ask") return;
  if (session.token) signIn();
  else showSignIn(null);
}

start();
