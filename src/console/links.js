// What several pages show the same way: links to a channel, a rule
// (subscription) and an event type, and the channel checklist of the
// subscription forms. Everything user-controlled is a text node (dom.js).

import { h, route } from "./dom.js";

// A link to channel `id`, named `name`; a channel that is gone (deleted,
// or not readable) is shown by its id, not linked.
export function channelLink(id, name) {
  if (name === undefined || name === null) {
    return h("span", { class: "muted" }, h("code", { class: "id" }, id), " (deleted)");
  }
  return h("a", { href: route(["channels", id]), "data-channel-link": id }, name || "(no name)");
}

// Channel ids as links named from `names` (a Map id -> name), comma-separated.
export function channelLinks(ids, names) {
  if (!ids || ids.length === 0) return h("span", { class: "muted" }, "none");
  return h("span", { class: "channel-links" }, ids.map((id, i) => [i ? ", " : null, channelLink(id, names.get(id))]));
}

// A link to rule `r`'s page.
export function ruleLink(r) {
  return h("a", { href: route(["subscriptions", r.id]), "data-rule-link": r.id }, r.name || "(no name)");
}

// A link to event type `type`'s page.
export function typeLink(type) {
  return h("a", { href: route(["event-types", type]), "data-type-link": type }, type);
}

// A filter as code, or a dash.
export function filterText(filter) {
  return filter ? h("code", { class: "filter" }, filter) : h("span", { class: "muted" }, "—");
}

// A fieldset of one checkbox per channel; `checked` is a Set of ids.
// Returns the fieldset and a function giving the checked ids.
export function channelChecklist(prefix, channels, checked) {
  const boxes = channels.map((c, i) => {
    const id = `${prefix}-${i}`;
    const box = h("input", { type: "checkbox", id, name: "channels", value: c.id, checked: checked.has(c.id) });
    return [box, h("div", { class: "field check" }, box,
      h("label", { for: id }, c.name || "(no name)", c.disabled ? h("span", { class: "muted" }, " (disabled)") : null))];
  });
  const fieldset = h("fieldset", { class: "checklist", id: `${prefix}-list` },
    h("legend", {}, "Channels"),
    boxes.length ? boxes.map(([, row]) => row)
      : h("p", { class: "empty" }, "No channels yet: ", h("a", { href: route(["channels"]) }, "create one first"), "."));
  return [fieldset, () => boxes.filter(([box]) => box.checked).map(([box]) => box.value)];
}
