// Hand-drawn SVG charts: line plots, a histogram, and grouped bars with 95% interval whiskers.
// Series differ by dash pattern, marker shape and fill pattern as well as by colour, and are labelled, so
// the charts read without colour.

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f66c1", "#d2691e", "#6a3d9a", "#138a72"];
const DASHES = ["", "7 4", "2 3", "10 3 2 3"];
const MARKERS = ["circle", "square", "triangle", "diamond"];
let uid = 0;

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function frame(name, title, width, height) {
  const root = svg("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": title,
    "data-chart": name,
  });
  root.append(svg("title", {}, title));
  root.append(svg("text", { class: "title", x: 2, y: 14 }, title));
  return root;
}

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count - 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(12)));
    if (ticks.length > 50) break;
  }
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

/** Decimals that tell the ticks apart (for fractions shown as percentages, of the percentage). */
function tickDecimals(ticks, percent) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) * (percent ? 100 : 1) : 1;
  let d = Math.max(0, -Math.floor(Math.log10(step)));
  while (d < 8 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-6) d += 1;
  return d;
}

function fmtTick(v, percent, decimals) {
  if (percent) return `${(v * 100).toFixed(decimals ?? 1).replace(/\.0+$/, "")}%`;
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 100000 || (a < 0.0001 && decimals === undefined)) return v.toExponential(1);
  if (decimals !== undefined) return v.toFixed(Math.min(decimals, 6));
  return String(Number(v.toPrecision(3)));
}

function marker(shape, x, y, color) {
  const r = 3.2;
  const common = { class: "marker", stroke: color };
  if (shape === "square") return svg("rect", { ...common, x: x - r, y: y - r, width: 2 * r, height: 2 * r });
  if (shape === "triangle") {
    return svg("polygon", { ...common, points: `${x},${y - r - 1} ${x - r - 1},${y + r} ${x + r + 1},${y + r}` });
  }
  if (shape === "diamond") {
    return svg("polygon", { ...common, points: `${x},${y - r - 1} ${x + r + 1},${y} ${x},${y + r + 1} ${x - r - 1},${y}` });
  }
  return svg("circle", { ...common, cx: x, cy: y, r });
}

function emptyNote(root, x, y, text) {
  root.append(svg("text", { class: "empty-note", x, y, "text-anchor": "middle" }, text));
}

function yAxis(root, ticks, scaleY, left, right, percent) {
  const decimals = tickDecimals(ticks, percent);
  for (const t of ticks) {
    const y = scaleY(t);
    root.append(svg("line", { class: "grid-line", x1: left, x2: right, y1: y, y2: y }));
    root.append(svg("text", { class: "tick", x: left - 5, y: y + 3.5, "text-anchor": "end" }, fmtTick(t, percent, decimals)));
  }
}

function legend(root, items, left, y) {
  // One line under the title; text width is estimated (no layout pass needed).
  let x = left;
  for (const { name, draw } of items) {
    draw(x, y);
    root.append(svg("text", { class: "legend-text", x: x + 27, y: y + 4 }, name));
    x += 27 + name.length * 6.1 + 14;
  }
}

/**
 * A line plot. `series`: [{name, points: [{x, y}]}]; options: xLabel, yLabel, percent (y is a fraction),
 * yDomain ([lo, hi] fixed). Draws markers when there are few points, so a one-point curve still shows.
 */
export function lineChart({ name, title, series, xLabel = "step", yLabel = "", percent = false, yDomain, width = 440, height = 230 }) {
  const root = frame(name, title, width, height);
  const m = { l: 52, r: 12, t: series.length > 1 ? 40 : 28, b: 38 };
  const left = m.l;
  const right = width - m.r;
  const top = m.t;
  const bottom = height - m.b;
  const all = series.flatMap((s) => s.points);
  root.append(svg("text", { class: "axis-label", x: (left + right) / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  if (yLabel) {
    root.append(svg("text", { class: "axis-label", x: 12, y: (top + bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(top + bottom) / 2})` }, yLabel));
  }
  root.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: bottom }));
  root.append(svg("line", { class: "axis", x1: left, x2: right, y1: bottom, y2: bottom }));
  if (!all.length) {
    emptyNote(root, (left + right) / 2, (top + bottom) / 2, "no points yet");
    root.dataset.points = "0";
    return root;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p.x)), Math.max(...all.map((p) => p.x))];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  let [y0, y1] = yDomain || [Math.min(...all.map((p) => p.y)), Math.max(...all.map((p) => p.y))];
  if (y0 === y1) {
    const pad = Math.abs(y0) * 0.1 || 0.5;
    [y0, y1] = [y0 - pad, y1 + pad];
  }
  const yTicks = niceTicks(y0, y1, 5);
  if (!yDomain) [y0, y1] = [Math.min(y0, yTicks[0]), Math.max(y1, yTicks[yTicks.length - 1])];
  const sx = (x) => left + ((x - x0) / (x1 - x0)) * (right - left);
  const sy = (y) => bottom - ((y - y0) / (y1 - y0)) * (bottom - top);
  yAxis(root, yTicks.filter((t) => t >= y0 - 1e-12 && t <= y1 + 1e-12), sy, left, right, percent);
  for (const t of niceTicks(x0, x1, 6).filter((t) => t >= x0 && t <= x1 && Number.isInteger(t))) {
    root.append(svg("text", { class: "tick", x: sx(t), y: bottom + 14, "text-anchor": "middle" }, fmtTick(t, false)));
  }
  const items = [];
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const dash = DASHES[i % DASHES.length];
    const shape = MARKERS[i % MARKERS.length];
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    const g = svg("g", { class: "series-group", "data-series": s.name, "data-points": pts.length });
    if (pts.length > 1) {
      g.append(svg("polyline", { class: "series", stroke: color, "stroke-dasharray": dash || undefined,
        points: pts.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ") }));
    }
    if (pts.length <= 40) {
      for (const p of pts) {
        const mk = marker(shape, sx(p.x), sy(p.y), color);
        mk.append(svg("title", {}, `${s.name} at step ${p.x}: ${fmtTick(p.y, percent)}`));
        g.append(mk);
      }
    }
    root.append(g);
    items.push({ name: s.name, draw: (x, y) => {
      root.append(svg("line", { class: "series", stroke: color, "stroke-dasharray": dash || undefined, x1: x, x2: x + 22, y1: y, y2: y }));
      root.append(marker(shape, x + 11, y, color));
    } });
  });
  if (series.length > 1) legend(root, items, left - 30, 27);
  root.dataset.points = String(all.length);
  return root;
}

/** A histogram: `bins` [{start, end, count}] as adjacent bars with their counts printed above. */
export function histogram({ name, title, bins, xLabel, yLabel = "count", width = 440, height = 230 }) {
  const root = frame(name, title, width, height);
  const m = { l: 46, r: 12, t: 30, b: 38 };
  const left = m.l;
  const right = width - m.r;
  const top = m.t;
  const bottom = height - m.b;
  root.append(svg("text", { class: "axis-label", x: (left + right) / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  root.append(svg("text", { class: "axis-label", x: 12, y: (top + bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(top + bottom) / 2})` }, yLabel));
  root.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: bottom }));
  root.append(svg("line", { class: "axis", x1: left, x2: right, y1: bottom, y2: bottom }));
  if (!bins.length) {
    emptyNote(root, (left + right) / 2, (top + bottom) / 2, "no labels yet");
    return root;
  }
  const ticks = niceTicks(0, Math.max(1, ...bins.map((b) => b.count)), 5);
  const yMax = ticks[ticks.length - 1];
  const sy = (v) => bottom - (v / yMax) * (bottom - top);
  yAxis(root, ticks, sy, left, right, false);
  const lo = bins[0].start;
  const hi = bins[bins.length - 1].end;
  const sx = (x) => left + ((x - lo) / (hi - lo || 1)) * (right - left);
  for (const b of bins) {
    const x = sx(b.start) + 1;
    const w = Math.max(1, sx(b.end) - sx(b.start) - 2);
    const rect = svg("rect", { class: "bar bar-fill", x, y: sy(b.count), width: w, height: bottom - sy(b.count),
      "data-count": b.count });
    rect.append(svg("title", {}, `${b.start.toFixed(2)}–${b.end.toFixed(2)}: ${b.count}`));
    root.append(rect);
    root.append(svg("text", { class: "bar-value", x: x + w / 2, y: sy(b.count) - 3, "text-anchor": "middle" }, b.count));
  }
  const edges = [...bins.map((b) => b.start), hi];
  edges.forEach((e) => {
    root.append(svg("text", { class: "tick", x: sx(e), y: bottom + 14, "text-anchor": "middle" }, fmtTick(e, false)));
  });
  return root;
}

/**
 * Grouped bars with 95% interval whiskers: `groups` [{label, bars: [{label, value, lo, hi, n}]}]; values
 * are fractions. Each bar's model is written under it and its value above the whisker.
 */
export function intervalBars({ name, title, groups, yLabel = "accuracy", width = 560, height = 280 }) {
  const root = frame(name, title, width, height);
  const m = { l: 52, r: 12, t: 30, b: 48 };
  const left = m.l;
  const right = width - m.r;
  const top = m.t;
  const bottom = height - m.b;
  root.append(svg("text", { class: "axis-label", x: 12, y: (top + bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(top + bottom) / 2})` }, yLabel));
  root.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: bottom }));
  root.append(svg("line", { class: "axis", x1: left, x2: right, y1: bottom, y2: bottom }));
  const bars = groups.flatMap((g) => g.bars);
  if (!bars.length) {
    emptyNote(root, (left + right) / 2, (top + bottom) / 2, "no evaluation yet");
    return root;
  }
  const peak = Math.max(0.1, ...bars.map((b) => Math.max(b.value, b.hi)));
  const ticks = niceTicks(0, Math.min(1, peak * 1.15), 5);
  const yMax = ticks[ticks.length - 1];
  const sy = (v) => bottom - (Math.min(v, yMax) / yMax) * (bottom - top);
  yAxis(root, ticks, sy, left, right, true);
  const models = [...new Set(bars.map((b) => b.label))];
  const defs = svg("defs");
  const id = `hatch${(uid += 1)}`;
  models.forEach((_, i) => defs.append(pattern(`${id}-${i}`, i)));
  root.prepend(defs);
  const groupWidth = (right - left) / groups.length;
  const barWidth = Math.min(64, (groupWidth * 0.8) / Math.max(1, Math.max(...groups.map((g) => g.bars.length))));
  groups.forEach((g, gi) => {
    const start = left + gi * groupWidth + (groupWidth - barWidth * g.bars.length) / 2;
    g.bars.forEach((b, bi) => {
      const mi = models.indexOf(b.label);
      const x = start + bi * barWidth + 3;
      const w = barWidth - 6;
      const rect = svg("rect", { class: "bar", x, y: sy(b.value), width: w, height: Math.max(0, bottom - sy(b.value)),
        fill: `url(#${id}-${mi})`, "data-model": b.label, "data-benchmark": g.label });
      const interval = `${fmtTick(b.lo, true)}–${fmtTick(b.hi, true)}`;
      rect.append(svg("title", {}, `${g.label}, ${b.label}: ${fmtTick(b.value, true)} (95% ${interval}, n=${b.n})`));
      root.append(rect);
      const cx = x + w / 2;
      const whisker = svg("g", { class: "whisker", "data-model": b.label });
      whisker.append(svg("line", { class: "whisker", x1: cx, x2: cx, y1: sy(b.lo), y2: sy(b.hi) }));
      for (const v of [b.lo, b.hi]) {
        whisker.append(svg("line", { class: "whisker", x1: cx - 6, x2: cx + 6, y1: sy(v), y2: sy(v) }));
      }
      root.append(whisker);
      root.append(svg("text", { class: "bar-value", x: cx, y: sy(b.hi) - 5, "text-anchor": "middle" }, fmtTick(b.value, true)));
      root.append(svg("text", { class: "tick", x: cx, y: bottom + 14, "text-anchor": "middle" }, b.label));
    });
    root.append(svg("text", { class: "group-label", x: left + (gi + 0.5) * groupWidth, y: bottom + 32,
      "text-anchor": "middle" }, g.label));
  });
  return root;
}

function pattern(id, i) {
  // 0: solid, 1: diagonal hatching, 2: dots, 3: cross-hatching: tellable apart in grey print.
  const color = COLORS[i % COLORS.length];
  const p = svg("pattern", { id, patternUnits: "userSpaceOnUse", width: 8, height: 8 });
  const kind = i % 4;
  if (kind === 0) {
    p.append(svg("rect", { width: 8, height: 8, fill: color }));
    return p;
  }
  p.append(svg("rect", { width: 8, height: 8, fill: "#fff" }));
  if (kind === 1) p.append(svg("path", { d: "M-2,2 l4,-4 M0,8 l8,-8 M6,10 l4,-4", stroke: color, "stroke-width": 2.2 }));
  if (kind === 2) p.append(svg("circle", { cx: 4, cy: 4, r: 2.2, fill: color }));
  if (kind === 3) p.append(svg("path", { d: "M0,0 L8,8 M8,0 L0,8", stroke: color, "stroke-width": 1.6 }));
  return p;
}
