// One subscription (rule): its event type (with the type's description),
// the channels it sends to and its payload filter; for tokens that may
// write, the form that changes its channels and filter, and deleting it.
// A filter PostgreSQL cannot parse is refused by the API with
// PostgreSQL's own message, which the page shows; nothing is saved then.

import { call, nsPath, allChannels } from "./api.js";
import { h, route, time, facts, field } from "./dom.js";
import { channelLinks, typeLink, filterText, channelChecklist } from "./links.js";

export async function renderSubscription(ctx) {
  const [id] = ctx.args;
  const path = nsPath(ctx.ns, "rules", id);
  const rule = await call("GET", path);
  const [channels, type] = await Promise.all([
    allChannels(ctx.ns),
    call("GET", nsPath(ctx.ns, "event-types", rule.event_type)).catch(() => null),
  ]);
  const names = new Map(channels.map((c) => [c.id, c.name]));
  ctx.show(
    h("p", { class: "crumbs" }, h("a", { href: route(["subscriptions"]) }, "Subscriptions"), " / "),
    h("h1", {}, rule.name || "(no name)"),
    facts([
      ["ID", h("code", { id: "rule-id" }, rule.id)],
      ["Event type", h("span", {}, typeLink(rule.event_type),
        type && type.description ? h("span", { class: "description", id: "rule-type-description" }, type.description) : null)],
      ["Channels", h("span", { id: "rule-channels" }, channelLinks(rule.channels, names))],
      ["Filter", h("span", { id: "rule-filter" }, filterText(rule.filter))],
      ["Status", rule.disabled ? "disabled (matches no event)" : "enabled"],
      ["Created", time(rule.created_at)],
      ["Updated", time(rule.updated_at)],
    ]),
    h("p", { class: "links" },
      h("a", { href: route(["events"], { type: rule.event_type }) }, "Events of this type")),
    ctx.canWrite ? editForm(ctx, rule, channels, path)
      : h("p", { class: "note" }, "This token is read-only: this subscription can be looked at, not changed."),
    ctx.canWrite ? deleteSection(ctx, rule, path) : null);
}

function editForm(ctx, rule, channels, path) {
  const [list, selected] = channelChecklist("edit-rule-channel", channels, new Set(rule.channels));
  const filter = h("input", { id: "edit-rule-filter", name: "filter", autocomplete: "off", spellcheck: "false", value: rule.filter || "" });
  const save = h("button", { type: "submit", class: "primary" }, "Save changes");
  const form = h("form", { class: "card", id: "edit-rule" },
    list,
    field("Filter", filter, "A PostgreSQL jsonpath predicate over the payload, e.g. $.amount > 1000; empty: every event of the type is sent."),
    save);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(save, async () => {
      const f = filter.value.trim();
      await call("PATCH", path, { channels: selected(), filter: f ? f : null });
      ctx.notice("Subscription saved.");
      ctx.refresh();
    });
  });
  return h("section", { "aria-labelledby": "edit-rule-title" }, h("h2", { id: "edit-rule-title" }, "Edit"), form);
}

// Deleting asks for a second click on the page itself (no browser dialog).
function deleteSection(ctx, rule, path) {
  const area = h("div", { class: "confirm" });
  const start = h("button", { type: "button", class: "danger", id: "delete-rule" }, "Delete subscription…");
  start.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger", id: "delete-rule-confirm" }, "Delete it");
    const no = h("button", { type: "button" }, "Cancel");
    yes.addEventListener("click", () => ctx.run(yes, async () => {
      await call("DELETE", path);
      ctx.go(route(["subscriptions"]), `Subscription “${rule.name}” deleted.`);
    }));
    no.addEventListener("click", () => { area.replaceChildren(); start.focus(); });
    area.replaceChildren(h("p", {}, "Delete this subscription? New events of its type will no longer reach its channels; deliveries already enqueued go on."), yes, " ", no);
    no.focus();
  });
  return h("section", { "aria-labelledby": "delete-rule-title" }, h("h2", { id: "delete-rule-title" }, "Delete"), start, area);
}
