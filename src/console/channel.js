// One channel's page: its settings, delivery controls (rate limit,
// ordered) and health, the subscriptions (rules) that send to it, its
// signing secret on explicit request (tokens that may write only), and
// (for tokens that may write) editing its name, URL, headers and controls,
// enabling and disabling it, rotating the secret with an overlap, sending
// a test event and deleting it.

import { call, nsPath, allRules } from "./api.js";
import { h, route, time, facts, field, parseHeaders, formatHeaders } from "./dom.js";
import { status, breaker, controls } from "./channels.js";
import { ruleLink, typeLink, filterText } from "./links.js";

export async function renderChannel(ctx) {
  const [id] = ctx.args;
  const [c, rules] = await Promise.all([call("GET", nsPath(ctx.ns, "channels", id)), allRules(ctx.ns)]);
  const path = nsPath(ctx.ns, "channels", id);
  const headerList = Object.entries(c.headers || {});
  ctx.show(
    h("p", { class: "crumbs" }, h("a", { href: route(["channels"]) }, "Channels"), " / "),
    h("h1", {}, c.name || "(no name)"),
    facts([
      ["ID", h("code", {}, c.id)],
      ["URL", h("span", { class: "url", id: "channel-url" }, c.url)],
      ["Headers", headerList.length
        ? h("ul", { class: "plain", id: "channel-headers" }, headerList.map(([k, v]) => h("li", {}, h("code", {}, `${k}: ${v}`))))
        : h("span", { class: "muted" }, "none")],
      ["Rate limit", h("span", { id: "channel-rate-limit" }, c.rate_limit ? `${c.rate_limit} (at most)` : "none")],
      ["Ordered", h("span", { id: "channel-ordered" }, c.ordered ? "yes: one delivery at a time, in the order events were written" : "no")],
      ["Status", status(c)],
      ["Breaker", breaker(c)],
      ["In flight", String(c.in_flight ?? 0)],
      ["Failing since", c.failing_since ? time(c.failing_since) : "—"],
      ["Old secret valid until", c.previous_secret_until ? time(c.previous_secret_until) : null],
      ["Created", time(c.created_at)],
      ["Updated", time(c.updated_at)],
    ]),
    h("p", { class: "links" },
      h("a", { href: route(["events"], { channel: c.id }) }, "Events sent to this channel"), " · ",
      h("a", { href: route(["recover"], { channel: c.id }) }, "Recover (bulk resend)")),
    subscriptions(ctx, c, rules.filter((r) => r.channels.includes(c.id))),
    // A read-only token never sees the secret (the API refuses it with 403)
    // nor header values (the API sends "***").
    ctx.canWrite ? secretSection(ctx, path) : null,
    ctx.canWrite ? actions(ctx, c, path) : h("p", { class: "note" }, "This token is read-only: this channel can be looked at, not changed."),
    ctx.canWrite ? editForm(ctx, c, path) : null,
    ctx.canWrite ? rotateForm(ctx, path) : null,
    ctx.canWrite ? deleteSection(ctx, c, path) : null);
}

// The secret is fetched only when asked for, and hidden again on request.
function secretSection(ctx, path) {
  const out = h("div", { class: "secret", id: "secret", "aria-live": "polite" });
  const button = h("button", { type: "button", id: "show-secret", "aria-controls": "secret" }, "Show signing secret");
  button.addEventListener("click", () => ctx.run(button, async () => {
    if (out.childElementCount) {
      out.replaceChildren();
      button.textContent = "Show signing secret";
      return;
    }
    const { signing_secret: secret } = await call("GET", `${path}/secret`);
    out.replaceChildren(h("code", { id: "secret-value" }, secret));
    button.textContent = "Hide signing secret";
  }));
  return h("section", { "aria-labelledby": "secret-title" },
    h("h2", { id: "secret-title" }, "Signing secret"),
    h("p", { class: "hint" }, "Receivers verify the webhook-signature header with it."),
    button, out);
}

function actions(ctx, c, path) {
  const toggle = h("button", { type: "button", id: c.disabled ? "enable" : "disable" }, c.disabled ? "Enable" : "Disable");
  toggle.addEventListener("click", () => ctx.run(toggle, async () => {
    await call("POST", `${path}/${c.disabled ? "enable" : "disable"}`, {});
    ctx.notice(c.disabled ? "Channel enabled." : "Channel disabled: its unfinished deliveries will fail.");
    ctx.refresh();
  }));
  const test = h("button", { type: "button", id: "send-test" }, "Send test event");
  test.addEventListener("click", () => ctx.run(test, async () => {
    const { ids } = await call("POST", `${path}/test`, {});
    ctx.notice("Test event sent: ", ids.map((id) => h("a", { href: route(["events", id]) }, id)));
  }));
  return h("section", { "aria-labelledby": "actions-title" },
    h("h2", { id: "actions-title" }, "Actions"),
    h("div", { class: "buttons" }, toggle, test));
}

// The subscriptions (rules) that send to this channel.
function subscriptions(ctx, c, rules) {
  return h("section", { "aria-labelledby": "channel-rules-title" },
    h("h2", { id: "channel-rules-title" }, `Subscriptions (${rules.length})`),
    rules.length === 0 ? h("p", { class: "empty" }, "No subscription sends to this channel: it receives only test events.")
      : h("ul", { class: "plain rules", id: "channel-rules" }, rules.map((r) => h("li", { "data-rule": r.id },
        ruleLink(r), ": ", typeLink(r.event_type), r.filter ? [" if ", filterText(r.filter)] : null,
        r.disabled ? h("span", { class: "muted" }, " (disabled)") : null))),
    ctx.canWrite ? h("p", {}, h("a", { href: route(["subscriptions"], { channel: c.id }), id: "subscribe-channel" }, "Subscribe this channel to an event type")) : null);
}

function editForm(ctx, c, path) {
  const name = h("input", { id: "edit-name", name: "name", required: true, value: c.name || "", autocomplete: "off" });
  const url = h("input", { id: "edit-url", name: "url", type: "url", required: true, value: c.url, autocomplete: "off" });
  const headers = h("textarea", { id: "edit-headers", name: "headers", rows: "3", spellcheck: "false", value: formatHeaders(c.headers) });
  const [rate, ordered, controlFields] = controls("edit", c);
  const save = h("button", { type: "submit", class: "primary" }, "Save changes");
  const form = h("form", { class: "card", id: "edit-channel" },
    field("Name", name),
    field("URL", url),
    field("Headers", headers, "One per line: Name: value. Saving replaces all of them."),
    controlFields,
    save);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(save, async () => {
      await call("PATCH", path, {
        name: name.value.trim(), url: url.value.trim(), headers: parseHeaders(headers.value),
        rate_limit: rate.value.trim() || null, ordered: ordered.checked,
      });
      ctx.notice("Channel saved.");
      ctx.refresh();
    });
  });
  return h("section", { "aria-labelledby": "edit-title" }, h("h2", { id: "edit-title" }, "Edit"), form);
}

function rotateForm(ctx, path) {
  const overlap = h("input", { id: "rotate-overlap", name: "overlap", value: "24h", autocomplete: "off" });
  const rotate = h("button", { type: "submit" }, "Rotate secret");
  const form = h("form", { class: "card", id: "rotate-secret" },
    field("Overlap", overlap, "How long the old secret stays valid too (e.g. 24h, 30m; 0s = not at all). Receivers accept either signature meanwhile."),
    rotate);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(rotate, async () => {
      const body = overlap.value.trim() ? { overlap: overlap.value.trim() } : {};
      const answer = await call("POST", `${path}/rotate-secret`, body);
      const until = answer.previous_secret_until;
      ctx.notice(until ? [`Secret rotated; the old one stays valid until `, time(until), ". Use “Show signing secret” to see the new one."]
        : "Secret rotated. Use “Show signing secret” to see the new one.");
      ctx.refresh();
    });
  });
  return h("section", { "aria-labelledby": "rotate-title" }, h("h2", { id: "rotate-title" }, "Rotate the signing secret"), form);
}

// Deleting asks for a second click on the page itself (no browser dialog).
function deleteSection(ctx, c, path) {
  const area = h("div", { class: "confirm" });
  const start = h("button", { type: "button", class: "danger", id: "delete" }, "Delete channel…");
  start.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger", id: "delete-confirm" }, "Delete it");
    const no = h("button", { type: "button" }, "Cancel");
    yes.addEventListener("click", () => ctx.run(yes, async () => {
      await call("DELETE", path);
      ctx.go(route(["channels"]), `Channel “${c.name}” deleted.`);
    }));
    no.addEventListener("click", () => { area.replaceChildren(); start.focus(); });
    area.replaceChildren(h("p", {}, "Delete this channel? Its unfinished deliveries will fail and it will no longer be listed."), yes, " ", no);
    no.focus();
  });
  return h("section", { "aria-labelledby": "delete-title" }, h("h2", { id: "delete-title" }, "Delete"), start, area);
}
