// One event: its payload pretty-printed (as text), and each channel's
// delivery with its state, reason, next attempt and every recorded attempt
// (time, outcome, HTTP status, duration, response body excerpt, error),
// with a resend button per delivery. While a delivery is unfinished the
// page reloads itself every 1.5 s, so a resend is seen to finish.

import { call, nsPath } from "./api.js";
import { h, route, time, badge, facts, UNFINISHED } from "./dom.js";
import { channelLink, ruleLink, typeLink } from "./links.js";

const EXCERPT = 300;
const POLL_MS = 1500;

export async function renderEvent(ctx) {
  const [id] = ctx.args;
  const load = () => call("GET", nsPath(ctx.ns, "events", id));
  let event = await load();
  const [names, rule] = await Promise.all([channelNames(ctx, event.deliveries || []), ruleOf(ctx, event)]);
  ctx.show(...page(ctx, event, names, rule));
  let last = JSON.stringify(event);
  ctx.repeat(POLL_MS, async () => {
    if (!(event.deliveries || []).some((d) => UNFINISHED.has(d.state))) return;
    event = await load();
    const now = JSON.stringify(event);
    if (now === last) return;
    last = now;
    ctx.show(...page(ctx, event, await channelNames(ctx, event.deliveries || []), rule));
  });
}

// The rule (subscription) that made the event; null when it has none or
// it was deleted.
function ruleOf(ctx, event) {
  if (!event.rule_id) return Promise.resolve(null);
  return call("GET", nsPath(ctx.ns, "rules", event.rule_id)).catch(() => null);
}

// Channel id -> name, for the channels of these deliveries (a deleted or
// unreadable channel is shown by its id).
async function channelNames(ctx, deliveries) {
  const ids = [...new Set(deliveries.map((d) => d.channel_id))];
  const found = await Promise.all(ids.map((cid) =>
    call("GET", nsPath(ctx.ns, "channels", cid)).then((c) => [cid, c.name], () => [cid, null])));
  return new Map(found);
}

function page(ctx, event, names, rule) {
  const deliveries = event.deliveries || [];
  const annotations = event.annotations && Object.keys(event.annotations).length ? event.annotations : null;
  const resendAll = ctx.canWrite && deliveries.length > 1
    ? resendButton(ctx, event, null, "Resend to every channel") : null;
  return [
    h("p", { class: "crumbs" }, h("a", { href: route(["events"]) }, "Event log"), " / "),
    h("h1", {}, h("span", { class: "muted" }, "Event "), event.type),
    facts([
      ["ID", h("code", { id: "event-id" }, event.id)],
      ["Type", typeLink(event.type)],
      ["Created", time(event.created_at)],
      ["Subscription", rule ? ruleLink(rule)
        : event.rule_id ? h("span", { class: "muted" }, h("code", { class: "id" }, event.rule_id), " (deleted)")
          : h("span", { class: "muted" }, "none (a test event)")],
    ]),
    h("section", { "aria-labelledby": "payload-title" },
      h("h2", { id: "payload-title" }, "Payload"),
      h("pre", { class: "json", id: "payload", tabindex: "0" }, JSON.stringify(event.payload, null, 2))),
    annotations ? h("section", { "aria-labelledby": "annotations-title" },
      h("h2", { id: "annotations-title" }, "Annotations"),
      h("pre", { class: "json", id: "annotations", tabindex: "0" }, JSON.stringify(annotations, null, 2))) : null,
    h("section", { "aria-labelledby": "deliveries-title" },
      h("div", { class: "title-row" }, h("h2", { id: "deliveries-title" }, `Deliveries (${deliveries.length})`), resendAll),
      deliveries.length ? deliveries.map((d) => delivery(ctx, event, d, names.get(d.channel_id)))
        : h("p", { class: "empty" }, "No channel was assigned to this event's rule when it was written.")),
  ];
}

function delivery(ctx, event, d, name) {
  const attempts = d.attempts || [];
  const headingId = `delivery-${d.id}`;
  return h("article", { class: "card delivery", "data-channel": d.channel_id, "data-state": d.state, "aria-labelledby": headingId },
    h("div", { class: "title-row" },
      h("h3", { id: headingId },
        h("a", { href: route(["channels", d.channel_id]) }, name ?? d.channel_id), " ", badge(d.state)),
      ctx.canWrite ? resendButton(ctx, event, d.channel_id, "Resend") : null),
    facts([
      ["Reason", d.reason || "—"],
      ["Next attempt", d.next_attempt_at ? time(d.next_attempt_at) : "—"],
      ["Attempts", String(d.attempt_count ?? attempts.length)],
      ["Clock started", d.clock_started_at ? time(d.clock_started_at) : null],
    ]),
    attempts.length === 0 ? h("p", { class: "muted" }, "No attempt yet.")
      : h("div", { class: "table-wrap" }, h("table", { class: "attempts" },
        h("caption", {}, `Attempts to ${name ?? d.channel_id}, oldest first`),
        h("thead", {}, h("tr", {}, ["Time", "HTTP status", "Outcome", "Duration", "Response body", "Error"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, attempts.map(attempt)))));
}

function attempt(a) {
  const body = a.response_body;
  const excerpt = body == null ? null : body.length > EXCERPT ? `${body.slice(0, EXCERPT)}…` : body;
  return h("tr", { class: "attempt", "data-status": a.http_status ?? "" },
    // With the Svix provider an attempt is Svix's: say so, with its message id.
    h("td", { "data-label": "Time" }, time(a.timestamp),
      a.svix_message_id ? h("div", { class: "muted provider" }, `via Svix, message ${a.svix_message_id}`) : null),
    h("td", { "data-label": "HTTP status", class: "num http-status" }, a.http_status == null ? "—" : String(a.http_status)),
    h("td", { "data-label": "Outcome" }, badge(a.state)),
    h("td", { "data-label": "Duration", class: "num" }, a.duration_ms == null ? "—" : `${a.duration_ms} ms`),
    h("td", { "data-label": "Response body" }, excerpt == null || excerpt === "" ? h("span", { class: "muted" }, "—") : h("pre", { class: "body" }, excerpt)),
    h("td", { "data-label": "Error" }, a.error ? h("span", { class: "error-text" }, a.error) : "—"));
}

// Resends the event to `channel` (every channel when null) and shows what
// the API did: resent (with the state it was in) and refused.
function resendButton(ctx, event, channel, label) {
  const button = h("button", { type: "button", class: "resend" }, label);
  button.addEventListener("click", () => ctx.run(button, async () => {
    const body = channel ? { channel } : {};
    const answer = await call("POST", `${nsPath(ctx.ns, "events", event.id)}/resend`, body);
    const list = (items) => items.map((item, i) => (i ? [", ", ...item] : item));
    const resent = (answer.resent || []).map((r) => [channelLink(r.channel_id, r.channel_name || r.channel_id), ` (was ${r.was})`]);
    const refused = (answer.refused || []).map((r) => [channelLink(r.channel_id, r.channel_name || r.channel_id), ` (${r.state})`]);
    ctx.notice("Resent to ", resent.length ? list(resent) : "no channel", ".",
      refused.length ? [" Refused: ", list(refused), "."] : "");
    ctx.refresh();
  }));
  return button;
}
