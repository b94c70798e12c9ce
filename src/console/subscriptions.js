// The subscriptions page: the namespace's rules (which event type goes to
// which channels, with which payload filter) and, for tokens that may
// write, the form that subscribes channels to an event type. The event
// types seen in the namespace are offered as choices, with their
// descriptions; another type can be typed. `#/subscriptions?type=T`
// (the event types page's "Subscribe" links) preselects T, and
// `?channel=ID` (a channel's page) ticks that channel. One rule is
// subscription.js.

import { call, nsPath, allChannels, allRules, eventTypes } from "./api.js";
import { h, route, field } from "./dom.js";
import { channelLinks, ruleLink, typeLink, filterText, channelChecklist } from "./links.js";

// The type picker's options are "t0", "t1", … (index into the types) and
// OTHER, so that no type's text is ever confused with a sentinel.
const OTHER = "other";

export async function renderSubscriptions(ctx) {
  const [rules, channels, types] = await Promise.all([allRules(ctx.ns), allChannels(ctx.ns), eventTypes(ctx.ns)]);
  const names = new Map(channels.map((c) => [c.id, c.name]));
  const rows = rules.map((r) => h("tr", { "data-rule": r.id },
    h("td", {}, ruleLink(r), r.disabled ? h("span", { class: "muted" }, " (disabled)") : null),
    h("td", {}, typeLink(r.event_type)),
    h("td", {}, channelLinks(r.channels, names)),
    h("td", {}, filterText(r.filter))));
  const table = rules.length === 0
    ? h("p", { class: "empty", id: "no-rules" }, "No subscriptions yet: no event reaches any channel.")
    : h("div", { class: "table-wrap" }, h("table", { id: "rules" },
      h("caption", { class: "visually-hidden" }, `Subscriptions of ${ctx.ns}`),
      h("thead", {}, h("tr", {}, ["Name", "Event type", "Channels", "Filter"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  const form = ctx.canWrite ? createForm(ctx, channels, types) : null;
  ctx.show(
    h("h1", {}, "Subscriptions"),
    h("p", {}, "A subscription (a rule) sends every event of one type to its channels, optionally only events whose payload meets a filter. ",
      h("a", { href: route(["event-types"]) }, "See the event types"), "."),
    table,
    form ? form.section : h("p", { class: "note" }, "This token is read-only: subscriptions can be looked at, not changed."));
  if (form && (ctx.params.get("type") || ctx.params.get("channel"))) form.focus();
}

function createForm(ctx, channels, types) {
  const wanted = ctx.params.get("type") || "";
  const at = types.findIndex((t) => t.type === wanted);
  const name = h("input", { id: "new-rule-name", name: "name", required: true, autocomplete: "off" });
  const described = h("p", { class: "hint", id: "new-rule-type-about", "aria-live": "polite" });
  const type = h("select", { id: "new-rule-type", name: "event_type", "aria-describedby": "new-rule-type-about",
    value: at >= 0 ? `t${at}` : wanted ? OTHER : types.length ? "t0" : "" },
  types.length ? null : h("option", { value: "" }, "no type seen yet: type one below"),
  types.map((t, i) => h("option", { value: `t${i}` }, `${t.type} (${t.count} stored)`)),
  h("option", { value: OTHER }, "Another type…"));
  const other = h("input", { id: "new-rule-type-other", name: "event_type_other", autocomplete: "off", spellcheck: "false",
    value: wanted && at < 0 ? wanted : "", placeholder: "e.g. invoice.paid" });
  const otherField = field("Other event type", other, "Events of this type that are emitted from now on will be sent.");
  const picked = () => (type.value.startsWith("t") ? types[Number(type.value.slice(1))] : undefined);
  const sync = () => {
    const t = picked();
    otherField.hidden = !(type.value === OTHER || types.length === 0);
    described.replaceChildren(t ? (t.description || "No description.") : "");
  };
  type.addEventListener("change", sync);
  const checked = new Set([ctx.params.get("channel")].filter(Boolean));
  const [list, selected] = channelChecklist("new-rule-channel", channels, checked);
  const filter = h("input", { id: "new-rule-filter", name: "filter", autocomplete: "off", spellcheck: "false", placeholder: "$.amount > 1000" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create subscription");
  const form = h("form", { class: "card", id: "create-rule" },
    field("Name", name, "For people: what this subscription is for."),
    h("div", { class: "field" }, h("label", { for: "new-rule-type" }, "Event type"), type, described),
    otherField,
    list,
    field("Filter (optional)", filter, "A PostgreSQL jsonpath predicate over the payload, e.g. $.amount > 1000: only events whose payload meets it are sent."),
    submit);
  sync();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(submit, async () => {
      const t = picked();
      const eventType = t ? t.type : other.value.trim();
      const body = { name: name.value.trim(), event_type: eventType, channels: selected() };
      if (filter.value.trim()) body.filter = filter.value.trim();
      const rule = await call("POST", nsPath(ctx.ns, "rules"), body);
      ctx.go(route(["subscriptions", rule.id]), `Subscription “${rule.name}” created.`);
    });
  });
  const section = h("section", { "aria-labelledby": "create-rule-title" }, h("h2", { id: "create-rule-title" }, "New subscription"), form);
  return { section, focus: () => name.focus() };
}
