// One event type: its description (what customers read about it), how many
// of its events are stored and when the last was written, the
// subscriptions that send it and to which channels; for tokens that may
// write, a link that subscribes a channel to it and the form that changes
// its description.

import { call, nsPath, allChannels, allRules } from "./api.js";
import { h, route, time, facts, field } from "./dom.js";
import { channelLinks, ruleLink, filterText } from "./links.js";

export async function renderEventType(ctx) {
  const [type] = ctx.args;
  const path = nsPath(ctx.ns, "event-types", type);
  const [t, rules, channels] = await Promise.all([call("GET", path), allRules(ctx.ns), allChannels(ctx.ns)]);
  const names = new Map(channels.map((c) => [c.id, c.name]));
  const mine = rules.filter((r) => r.event_type === t.type);
  ctx.show(
    h("p", { class: "crumbs" }, h("a", { href: route(["event-types"]) }, "Event types"), " / "),
    h("h1", {}, t.type),
    facts([
      ["Description", t.description ? h("span", { class: "description", id: "type-description" }, t.description)
        : h("span", { class: "muted", id: "type-description" }, "none yet")],
      ["Events stored", String(t.count)],
      ["Last seen", t.last_seen_at ? time(t.last_seen_at) : "never"],
    ]),
    h("p", { class: "links" },
      h("a", { href: route(["events"], { type: t.type }) }, "Events of this type"),
      ctx.canWrite ? [" · ", h("a", { href: route(["subscriptions"], { type: t.type }), id: "subscribe" }, "Subscribe a channel")] : null),
    h("section", { "aria-labelledby": "type-rules-title" },
      h("h2", { id: "type-rules-title" }, `Subscriptions (${mine.length})`),
      mine.length === 0 ? h("p", { class: "empty" }, "No subscription: events of this type reach no channel.")
        : h("ul", { class: "plain rules", id: "type-rules" }, mine.map((r) => h("li", {},
          ruleLink(r), " → ", channelLinks(r.channels, names), r.filter ? [" if ", filterText(r.filter)] : null)))),
    ctx.canWrite ? describeForm(ctx, t, path) : null);
}

function describeForm(ctx, t, path) {
  const text = h("textarea", { id: "type-description-text", name: "description", rows: "3", value: t.description || "" });
  const save = h("button", { type: "submit", class: "primary" }, "Save description");
  const form = h("form", { class: "card", id: "describe-type" },
    field("Description", text, "Shown to everyone who sees this namespace, customers included. Empty removes it."),
    save);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(save, async () => {
      await call("PATCH", path, { description: text.value });
      ctx.notice("Description saved.");
      ctx.refresh();
    });
  });
  return h("section", { "aria-labelledby": "describe-title" }, h("h2", { id: "describe-title" }, "Describe"), form);
}
