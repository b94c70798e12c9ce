// The channels page: every channel of the namespace with its health
// (enabled or disabled and why, breaker, deliveries in flight, failing
// since), paged with the API's cursor, and the form that creates one.
// One channel's page is channel.js.

import { call, nsPath, withQuery } from "./api.js";
import { h, route, time, field, parseHeaders } from "./dom.js";

const PAGE = 50;

export async function renderChannels(ctx) {
  const cursor = ctx.params.get("cursor");
  const page = await call("GET", withQuery(nsPath(ctx.ns, "channels"), { limit: PAGE, cursor }));
  const rows = page.items.map((c) => h("tr", { "data-channel": c.id },
    h("td", {}, h("a", { href: route(["channels", c.id]) }, c.name || "(no name)")),
    h("td", { class: "url" }, c.url),
    h("td", {}, status(c)),
    h("td", {}, breaker(c)),
    h("td", { class: "num" }, String(c.in_flight ?? 0)),
    h("td", {}, c.failing_since ? time(c.failing_since) : "—")));
  const table = page.items.length === 0
    ? h("p", { class: "empty" }, cursor ? "No more channels." : "No channels in this namespace yet.")
    : h("div", { class: "table-wrap" }, h("table", { id: "channels" },
      h("caption", { class: "visually-hidden" }, `Channels of ${ctx.ns}`),
      h("thead", {}, h("tr", {}, ["Name", "URL", "Status", "Breaker", "In flight", "Failing since"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  const pager = h("nav", { class: "pager", "aria-label": "Channel pages" },
    cursor ? h("a", { href: route(["channels"]) }, "First page") : null,
    page.next_cursor ? h("a", { href: route(["channels"], { cursor: page.next_cursor }) }, "Next page") : null);
  ctx.show(
    h("h1", {}, "Channels"),
    table,
    pager,
    ctx.canWrite ? createForm(ctx) : h("p", { class: "note" }, "This token is read-only: channels can be looked at, not changed."));
}

// "enabled", or "disabled" with the reason.
export function status(c) {
  if (c.deleted_at) return h("span", { class: "badge state-failed" }, "deleted");
  if (!c.disabled) return h("span", { class: "badge state-success" }, "enabled");
  return h("span", {}, h("span", { class: "badge state-failed" }, "disabled"),
    c.disabled_reason ? h("span", { class: "reason" }, ` ${c.disabled_reason}`) : null);
}

// The breaker state, with when an open one is probed again.
export function breaker(c) {
  if (!c.breaker) return h("span", { class: "muted" }, "—");
  const cls = c.breaker === "closed" ? "state-success" : c.breaker === "open" ? "state-failed" : "state-sending";
  return h("span", {}, h("span", { class: `badge ${cls}` }, c.breaker.replace("_", "-")),
    c.open_until ? [" until ", time(c.open_until)] : null);
}

// The delivery controls' fields of a channel form (`prefix` "new" or
// "edit"): the rate limit (N/s or N/m; empty: none) and ordered. Returns
// the two controls and their fields.
export function controls(prefix, c) {
  const rate = h("input", { id: `${prefix}-rate-limit`, name: "rate_limit", autocomplete: "off", spellcheck: "false",
    value: (c && c.rate_limit) || "", placeholder: "e.g. 10/s or 600/m" });
  const ordered = h("input", { id: `${prefix}-ordered`, name: "ordered", type: "checkbox", checked: Boolean(c && c.ordered) });
  return [rate, ordered, [
    field("Rate limit", rate, "At most N requests per second (N/s) or minute (N/m) to this endpoint; empty: no limit."),
    h("div", { class: "field check" }, ordered,
      h("label", { for: `${prefix}-ordered` }, "Ordered: one delivery at a time, in the order events were written (a retrying one holds back the next)")),
  ]];
}

function createForm(ctx) {
  const name = h("input", { id: "new-name", name: "name", required: true, autocomplete: "off" });
  const url = h("input", { id: "new-url", name: "url", type: "url", required: true, autocomplete: "off"});
  const headers = h("textarea", { id: "new-headers", name: "headers", rows: "3", spellcheck: "false", placeholder: "Authorization: Bearer …" });
  const disabled = h("input", { id: "new-disabled", name: "disabled", type: "checkbox" });
  const [rate, ordered, controlFields] = controls("new", null);
  const submit = h("button", { type: "submit", class: "primary" }, "Create channel");
  const form = h("form", { class: "card", id: "create-channel" },
    field("Name", name),
    field("URL", url, "Where the webhooks are POSTed."),
    field("Headers", headers, "Optional, one per line: Name: value. Sent with every request."),
    controlFields,
    h("div", { class: "field check" }, disabled, h("label", { for: "new-disabled" }, "Create it disabled")),
    submit);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(submit, async () => {
      const body = { name: name.value.trim(), url: url.value.trim(), headers: parseHeaders(headers.value) };
      if (disabled.checked) body.disabled = true;
      if (rate.value.trim()) body.rate_limit = rate.value.trim();
      if (ordered.checked) body.ordered = true;
      const channel = await call("POST", nsPath(ctx.ns, "channels"), body);
      // The signing secret in the answer is not shown: the channel's page
      // shows it on request.
      ctx.go(route(["channels", channel.id]), `Channel “${channel.name}” created.`);
    });
  });
  return h("section", { "aria-labelledby": "create-title" }, h("h2", { id: "create-title" }, "New channel"), form);
}
