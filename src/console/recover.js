// The recover page: resend a channel's finished deliveries since a time
// (after an endpoint outage, or once a disabled channel is fixed). It asks
// the API for a dry run first and shows how many deliveries would be resent;
// only a second click resends them.

import { call, nsPath, allChannels } from "./api.js";
import { h, route, field } from "./dom.js";

export async function renderRecover(ctx) {
  if (!ctx.canWrite) {
    ctx.show(h("h1", {}, "Recover a channel"),
      h("p", { class: "note" }, "This token is read-only: resending needs a token that may write."));
    return;
  }
  const channels = await allChannels(ctx.ns);
  const wanted = ctx.params.get("channel") || "";
  const channel = h("select", { id: "recover-channel", name: "channel", required: true, value: wanted },
    h("option", { value: "" }, "choose a channel"),
    channels.map((c) => h("option", { value: c.id }, `${c.name}${c.disabled ? " (disabled)" : ""}`)));
  const since = h("input", { id: "recover-since", name: "since", value: ctx.params.get("since") || "24h", autocomplete: "off" });
  const state = h("select", { id: "recover-state", name: "state", value: "FAILED" },
    ["FAILED", "SUCCESS", "SENDING"].map((s) => h("option", { value: s }, s)));
  const count = h("button", { type: "submit", class: "primary" }, "Count deliveries");
  const result = h("div", { id: "recover-result", "aria-live": "polite" });
  const form = h("form", { class: "card", id: "recover" },
    field("Channel", channel),
    field("Since", since, "A duration back from now (24h, 90m) or a time (2026-12-05T10:00:00Z). Empty: all."),
    field("Deliveries in state", state),
    count);
  const request = (dryRun) => {
    const body = { state: state.value, dry_run: dryRun };
    if (since.value.trim()) body.since = since.value.trim();
    return call("POST", `${nsPath(ctx.ns, "channels", channel.value)}/resend`, body);
  };
  // Any change makes the count stale: it must be asked for again.
  for (const control of [channel, since, state]) {
    control.addEventListener("input", () => result.replaceChildren());
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.run(count, async () => {
      result.replaceChildren();
      const dry = await request(true);
      const n = dry.resent;
      const detail = Object.entries(dry.by_state || {}).filter(([, v]) => v).map(([k, v]) => `${k}: ${v}`).join(", ");
      if (!n) {
        result.replaceChildren(h("p", { id: "recover-count" }, "No delivery matches: nothing to resend."));
        return;
      }
      const confirm = h("button", { type: "button", class: "danger", id: "recover-confirm" }, `Resend ${n} ${n === 1 ? "delivery" : "deliveries"}`);
      confirm.addEventListener("click", () => ctx.run(confirm, async () => {
        const done = await request(false);
        result.replaceChildren(
          h("p", { id: "recover-done" }, `Resent ${done.resent} ${done.resent === 1 ? "delivery" : "deliveries"}. `,
            h("a", { href: route(["events"], { channel: channel.value }) }, "Follow them in the event log")));
      }));
      result.replaceChildren(
        h("p", { id: "recover-count" }, `${n} ${n === 1 ? "delivery" : "deliveries"} would be resent${detail ? ` (${detail})` : ""}.`),
        confirm);
      confirm.focus();
    });
  });
  ctx.show(
    h("h1", {}, "Recover a channel"),
    h("p", {}, "Resend a channel's deliveries since a time, e.g. after its endpoint was down. " +
      "The count is shown before anything is resent."),
    form,
    result);
}
