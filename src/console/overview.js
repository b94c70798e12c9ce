// The overview page: delivery counts by state, what is due, the oldest
// unfinished delivery, open breakers, and a chart of deliveries and
// failures per minute over the last hour (inline SVG built with DOM calls),
// from GET /v1/namespaces/{ns}/stats.

import { call, nsPath } from "./api.js";
import { h, svg, route, duration, STATES, badge } from "./dom.js";

export async function renderOverview(ctx) {
  const stats = await call("GET", nsPath(ctx.ns, "stats"));
  const by = stats.by_state || {};
  const stateCards = STATES.map((s) =>
    h("a", { class: "stat", href: route(["events"], { state: s }) },
      h("span", { class: "stat-value" }, String(by[s] ?? 0)), badge(s)));
  const refresh = h("button", { type: "button" }, "Refresh");
  refresh.addEventListener("click", () => ctx.run(refresh, async () => ctx.refresh()));
  ctx.show(
    h("div", { class: "title-row" }, h("h1", {}, `Overview of ${ctx.ns}`), refresh),
    h("section", { "aria-labelledby": "by-state" },
      h("h2", { id: "by-state" }, "Deliveries by state"),
      h("div", { class: "stats" }, stateCards)),
    h("section", { "aria-labelledby": "health" },
      h("h2", { id: "health" }, "Health"),
      h("div", { class: "stats" },
        stat("Due now", String(stats.due_now ?? 0)),
        stat("Oldest unfinished", stats.oldest_unfinished_age_seconds == null
          ? "none" : duration(stats.oldest_unfinished_age_seconds)),
        stat("Breakers open", String(stats.breakers_open ?? 0)))),
    h("section", { "aria-labelledby": "last-hour" },
      h("h2", { id: "last-hour" }, "Last hour"),
      chart(stats.per_minute || [])));
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("span", { class: "stat-value" }, value), h("span", { class: "stat-label" }, label));
}

// Bars per minute, oldest left: the whole bar is the deliveries, its red
// part the failures. Each bar has a <title> (a tooltip); the chart's label
// sums it up for screen readers.
function chart(perMinute) {
  const width = 600;
  const height = 150;
  const top = 10;
  const bottom = 20;
  const left = 30;
  const plotH = height - top - bottom;
  const plotW = width - left;
  const max = Math.max(1, ...perMinute.map((m) => m.deliveries || 0));
  const step = plotW / Math.max(perMinute.length, 1);
  const total = perMinute.reduce((a, m) => a + (m.deliveries || 0), 0);
  const failed = perMinute.reduce((a, m) => a + (m.failures || 0), 0);
  const summary = `Deliveries per minute over the last hour: ${total} deliveries, ${failed} failures; at most ${max} in one minute.`;
  const bars = perMinute.map((m, i) => {
    const d = m.deliveries || 0;
    const f = Math.min(m.failures || 0, d);
    const x = left + i * step + 1;
    const w = Math.max(step - 2, 1);
    const dh = (d / max) * plotH;
    const fh = (f / max) * plotH;
    const when = new Date(m.minute);
    const label = `${Number.isNaN(when.getTime()) ? m.minute : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${d} deliveries, ${f} failures`;
    return svg("g", {},
      svg("title", {}, label),
      svg("rect", { class: "bar-ok", x, y: top + plotH - dh, width: w, height: dh }),
      svg("rect", { class: "bar-failed", x, y: top + plotH - fh, width: w, height: fh }),
      // An invisible full-height target so small bars still show a tooltip.
      svg("rect", { class: "bar-hit", x, y: top, width: w, height: plotH }));
  });
  const figure = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary,
  },
  svg("line", { class: "axis", x1: left, y1: top + plotH, x2: width, y2: top + plotH }),
  svg("text", { class: "axis-label", x: left - 4, y: top + 8, "text-anchor": "end" }, String(max)),
  svg("text", { class: "axis-label", x: left - 4, y: top + plotH, "text-anchor": "end" }, "0"),
  svg("text", { class: "axis-label", x: left, y: height - 4 }, "60 min ago"),
  svg("text", { class: "axis-label", x: width, y: height - 4, "text-anchor": "end" }, "now"),
  bars);
  return h("figure", { class: "chart-box" }, figure,
    h("figcaption", {},
      h("span", { class: "legend legend-ok" }, "delivered"), " ",
      h("span", { class: "legend legend-failed" }, "failed"), " ",
      h("span", { class: "muted" }, `${total} deliveries, ${failed} failures in the last hour`)));
}
