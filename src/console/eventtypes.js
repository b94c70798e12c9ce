// The event types page: every type of the namespace (seen in its events,
// subscribed to, or described by the operator), with its description, how
// many of its events are stored, when the last was written and how many
// subscriptions it has; tokens that may write get a "Subscribe" link per
// type. One type is eventtype.js.

import { eventTypes } from "./api.js";
import { h, route, time } from "./dom.js";
import { typeLink } from "./links.js";

export async function renderEventTypes(ctx) {
  const types = await eventTypes(ctx.ns);
  const rows = types.map((t) => h("tr", { "data-type": t.type },
    h("td", {}, typeLink(t.type)),
    h("td", { class: "description" }, t.description || h("span", { class: "muted" }, "—")),
    h("td", { class: "num" }, String(t.count)),
    h("td", {}, t.last_seen_at ? time(t.last_seen_at) : h("span", { class: "muted" }, "never")),
    h("td", { class: "num" }, String(t.rules)),
    ctx.canWrite ? h("td", {}, h("a", { href: route(["subscriptions"], { type: t.type }), class: "subscribe" },
      "Subscribe", h("span", { class: "visually-hidden" }, ` a channel to ${t.type}`))) : null));
  const heads = ["Type", "Description", "Events stored", "Last seen", "Subscriptions"];
  if (ctx.canWrite) heads.push("Action");
  const table = types.length === 0
    ? h("p", { class: "empty" }, "No event types yet: none was emitted, subscribed to or described in this namespace.")
    : h("div", { class: "table-wrap" }, h("table", { id: "event-types" },
      h("caption", { class: "visually-hidden" }, `Event types of ${ctx.ns}`),
      h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  ctx.show(
    h("h1", {}, "Event types"),
    h("p", {}, "The types of event this namespace sends. Events stored counts what is kept (finished events are removed after the retention period)."),
    table);
}
