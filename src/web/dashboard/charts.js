// Small SVG charts drawn from plain data: vertical bars over time, horizontal bars by category.
// Every shape is an element (no inline style, so the page's Content-Security-Policy holds), every
// bar carries a <title> with its exact value, and the chart is an image with a text alternative.

const NS = "http://www.w3.org/2000/svg";

function el(name, attributes = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
export function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

function svgRoot(width, height, label) {
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "svg-chart" });
  svg.append(el("title", {}, label));
  return svg;
}

function empty(container, message) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = message;
  container.replaceChildren(p);
}

// Vertical bars, one per point of `points` ([{label, value, tick}] in time order): `tick` is the
// short axis label (shown for a few bars only when there are many).
export function timeBars(container, points, { label, format = String, emptyText = "No usage in this window." }) {
  if (!points.length || points.every((p) => p.value === 0)) return empty(container, emptyText);
  const width = 960, height = 250, left = 56, right = 12, top = 14, bottom = 34;
  const plotW = width - left - right, plotH = height - top - bottom;
  const max = niceMax(Math.max(...points.map((p) => p.value)));
  const svg = svgRoot(width, height, label);
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    svg.append(el("line", { x1: left, x2: width - right, y1: y, y2: y, class: i ? "grid" : "axis" }));
    svg.append(el("text", { x: left - 8, y: y + 4, "text-anchor": "end", class: "tick" }, format((max * i) / 4)));
  }
  const slot = plotW / points.length;
  const barW = Math.max(1, Math.min(28, slot * 0.72));
  const every = Math.ceil(points.length / 8);
  points.forEach((point, i) => {
    const h = (plotH * point.value) / max;
    const x = left + slot * i + (slot - barW) / 2;
    const bar = el("rect", { x, y: top + plotH - h, width: barW, height: Math.max(h, point.value ? 1 : 0), rx: Math.min(3, barW / 3), class: "bar", "data-value": point.value });
    bar.append(el("title", {}, `${point.label}: ${format(point.value)}`));
    svg.append(bar);
    if (i % every === 0) {
      svg.append(el("text", { x: left + slot * i + slot / 2, y: height - bottom + 18, "text-anchor": "middle", class: "tick" }, point.tick));
    }
  });
  container.replaceChildren(svg);
}

// Horizontal bars, one per row of `rows` ([{label, value, text?}]), largest first.
export function categoryBars(container, rows, { label, format = String, emptyText = "Nothing in this window." }) {
  if (!rows.length) return empty(container, emptyText);
  const sorted = [...rows].sort((a, b) => b.value - a.value).slice(0, 12);
  const rowH = 30, width = 520, labelW = 110, valueW = 190, top = 6;
  const height = top * 2 + rowH * sorted.length;
  const plotW = width - labelW - valueW;
  const max = Math.max(...sorted.map((r) => r.value), 1);
  const svg = svgRoot(width, height, label);
  sorted.forEach((row, i) => {
    const y = top + rowH * i;
    const w = Math.max(2, (plotW * row.value) / max);
    const name = row.label.length > 15 ? `${row.label.slice(0, 14)}…` : row.label;
    svg.append(el("text", { x: labelW - 10, y: y + rowH / 2 + 4, "text-anchor": "end", class: "cat" }, name));
    const bar = el("rect", { x: labelW, y: y + 5, width: w, height: rowH - 10, rx: 3, class: "bar", "data-value": row.value });
    bar.append(el("title", {}, `${row.label}: ${row.text || format(row.value)}`));
    svg.append(bar);
    svg.append(el("text", { x: labelW + w + 8, y: y + rowH / 2 + 4, class: "val" }, row.text || format(row.value)));
  });
  container.replaceChildren(svg);
}
