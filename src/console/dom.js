// DOM helpers: every page builds its nodes with these, so user-controlled
// text (names, URLs, payloads, response bodies) always becomes a text node
// and is never parsed as HTML. Also the formatting of times, durations and
// delivery states shared by the pages.

const SVG_NS = "http://www.w3.org/2000/svg";

// Properties set as DOM properties rather than attributes.
const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "selected", "required", "readOnly", "multiple"]);

function apply(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.setAttribute("class", value);
    } else if (PROPERTIES.has(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// An HTML element: h("a", {href: "#/"}, "text", otherNode). Children are
// appended before the properties are set, so a <select>'s value can name
// one of its options.
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  append(el, children);
  apply(el, props);
  return el;
}

// An SVG element, same shape as h().
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  append(el, children);
  for (const [key, value] of Object.entries(props || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  return el;
}

// A hash link inside the console: path parts are URI-encoded, query
// values too.
export function route(parts, query) {
  const path = parts.map((p) => encodeURIComponent(p)).join("/");
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const qs = q.toString();
  return "#/" + path + (qs ? "?" + qs : "");
}

// "2026-12-05 15:10:06" in the browser's time zone, inside a <time>.
export function time(rfc3339) {
  if (!rfc3339) return h("span", { class: "muted" }, "—");
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return h("span", {}, rfc3339);
  const pad = (n) => String(n).padStart(2, "0");
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h("time", { datetime: rfc3339, title: rfc3339 }, text);
}

// 4212 -> "1h 10m 12s".
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  let s = Math.round(Number(seconds));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  if (s || parts.length === 0) parts.push(`${s}s`);
  return parts.slice(0, 2).join(" ");
}

export const STATES = ["PENDING", "SENDING", "RESENDING", "SUCCESS", "FAILED"];
export const UNFINISHED = new Set(["PENDING", "SENDING", "RESENDING"]);

// A delivery state as a badge.
export function badge(state) {
  const known = STATES.includes(state) ? state.toLowerCase() : "unknown";
  return h("span", { class: `badge state-${known}` }, state);
}

// A <dl> from [term, value] pairs (null values are skipped).
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined)
      .map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

// "Name: value" lines -> {Name: "value"}; throws an Error naming the bad
// line.
export function parseHeaders(text) {
  const headers = {};
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const at = line.indexOf(":");
    if (at <= 0) throw new Error(`Header line ${i + 1} must look like "Name: value".`);
    headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return headers;
}

// {Name: "value"} -> "Name: value" lines.
export function formatHeaders(headers) {
  return Object.entries(headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
}

// A form field: <div><label for=id>label</label> control hint</div>.
export function field(label, control, hint) {
  const id = control.id;
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
}
