// The event log: the namespace's events newest first, filtered by type,
// delivery state, channel and time, paged with the API's cursor. The
// filters live in the address (`#/events?type=…&cursor=…`), so the back
// button and a copied link show the same page. One event is event.js.

import { call, nsPath, withQuery, allChannels } from "./api.js";
import { h, route, time, badge, field, STATES } from "./dom.js";
import { channelLink, typeLink } from "./links.js";

const PAGE = 50;
const FILTERS = ["type", "state", "channel", "since"];

export async function renderEvents(ctx) {
  const filters = Object.fromEntries(FILTERS.map((k) => [k, ctx.params.get(k) || ""]));
  // A page size in the address (`limit`, 1–500) is kept while paging.
  const asked = Number.parseInt(ctx.params.get("limit") || "", 10);
  if (asked >= 1 && asked <= 500) filters.limit = String(asked);
  const cursor = ctx.params.get("cursor") || "";
  const [page, channels] = await Promise.all([
    call("GET", withQuery(nsPath(ctx.ns, "events"), { limit: PAGE, ...filters, cursor })),
    allChannels(ctx.ns).catch(() => []),
  ]);
  const names = new Map(channels.map((c) => [c.id, c.name]));
  const rows = page.items.map((e) => h("tr", { "data-event": e.id },
    h("td", {}, time(e.created_at)),
    h("td", {}, h("a", { href: route(["events", e.id]) }, e.type)),
    h("td", {}, (e.states || []).length ? e.states.map((s) => [badge(s), " "]) : h("span", { class: "muted" }, "no deliveries")),
    h("td", {}, h("a", { href: route(["events", e.id]), class: "id" }, h("code", { class: "id" }, e.id)))));
  const list = page.items.length === 0
    ? h("p", { class: "empty" }, cursor ? "No older events." : "No events match.")
    : h("div", { class: "table-wrap" }, h("table", { id: "events" },
      h("caption", { class: "visually-hidden" }, "Events, newest first"),
      h("thead", {}, h("tr", {}, ["Created", "Type", "Deliveries", "ID"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  const pager = h("nav", { class: "pager", "aria-label": "Event pages" },
    cursor ? h("a", { href: route(["events"], filters) }, "Newest") : null,
    page.next_cursor ? h("a", { href: route(["events"], { ...filters, cursor: page.next_cursor }), id: "older" }, "Older events") : null);
  const channelName = filters.channel ? names.get(filters.channel) || filters.channel : null;
  ctx.show(
    h("h1", {}, channelName ? `Events sent to ${channelName}` : "Event log"),
    filters.channel ? h("p", { class: "links" }, "Channel: ", channelLink(filters.channel, names.get(filters.channel))) : null,
    filters.type ? h("p", { class: "links" }, "Event type: ", typeLink(filters.type)) : null,
    filterForm(ctx, filters, channels),
    list,
    pager);
}

function filterForm(ctx, filters, channels) {
  const type = h("input", { id: "filter-type", name: "type", value: filters.type, autocomplete: "off", placeholder: "e.g. invoice.paid" });
  const state = h("select", { id: "filter-state", name: "state", value: filters.state },
    h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s }, s)));
  const known = channels.some((c) => c.id === filters.channel);
  const channel = h("select", { id: "filter-channel", name: "channel", value: filters.channel },
    h("option", { value: "" }, "any"),
    channels.map((c) => h("option", { value: c.id }, `${c.name} (${c.id.slice(0, 8)})`)),
    filters.channel && !known ? h("option", { value: filters.channel }, filters.channel) : null);
  const since = h("input", { id: "filter-since", name: "since", type: "datetime-local", value: toLocalInput(filters.since) });
  const apply = h("button", { type: "submit", class: "primary" }, "Apply");
  const form = h("form", { class: "filters", id: "event-filters", role: "search" },
    field("Type", type), field("State", state), field("Channel", channel), field("Since", since),
    h("div", { class: "field actions" }, apply, h("a", { href: route(["events"], { limit: filters.limit }) }, "Clear")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const d = since.value ? new Date(since.value) : null;
    ctx.go(route(["events"], {
      limit: filters.limit,
      type: type.value.trim(),
      state: state.value,
      channel: channel.value,
      since: d && !Number.isNaN(d.getTime()) ? d.toISOString() : "",
    }));
  });
  return form;
}

// An RFC 3339 time as the value of a datetime-local input (local time).
function toLocalInput(rfc3339) {
  if (!rfc3339) return "";
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
