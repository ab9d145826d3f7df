// Shared helpers of the dashboard pages: the API call (cookie + CSRF header), DOM building, formatting.
// Everything that comes from the API is inserted as text (never as HTML).

export const PREFIX = "/dashboard";
export const STAGES = ["teacher_sampling", "sft", "labeling", "reward_model", "rl", "evaluation"];
export const STAGE_TITLES = {
  teacher_sampling: "Teacher sampling",
  sft: "SFT",
  labeling: "Pseudo-labels",
  reward_model: "Reward model",
  rl: "RL",
  evaluation: "Evaluation",
};
export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const SYMBOLS = { pending: "◌", running: "▶", succeeded: "✓", failed: "✗", cancelled: "⊘" };

/** An error answer of the API: `{"error": {"code", "message", "param"}}`. */
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.param = err.param || null;
  }
}

/** Go to the sign-in page, coming back here afterwards. */
export function toLogin() {
  const next = location.pathname + location.search;
  location.assign(`${PREFIX}/login?next=${encodeURIComponent(next)}`);
}

/** A random Idempotency-Key (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "dash-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Call the API with the sign-in cookie. Mutating requests carry X-Twofold-CSRF (the API refuses cookie
 * POSTs without it) and an Idempotency-Key. Returns the parsed JSON; throws ApiError; 401 -> sign-in page.
 */
export async function api(path, { method = "GET", json, form, headers = {} } = {}) {
  const h = { Accept: "application/json", ...headers };
  let body;
  if (method !== "GET") {
    h["X-Twofold-CSRF"] = "1";
    if (!h["Idempotency-Key"]) h["Idempotency-Key"] = newIdempotencyKey();
  }
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(path, { method, headers: h, body, credentials: "same-origin" });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401) toLogin();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Every item of a paginated /v1 list (`path` without a query), at most `maxPages` pages of 100. */
export async function listAll(path, maxPages = 10) {
  const items = [];
  let after = null;
  for (let i = 0; i < maxPages; i += 1) {
    const q = new URLSearchParams({ limit: "100" });
    if (after) q.set("after", after);
    const page = await api(`${path}?${q}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return items;
}

/** Create an element: `el("td", {class: "num", text: "3"}, child, ...)`; strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of the element with id `id`. */
export function fill(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

/** A status badge: symbol and word (colour is only a hint). */
export function statusBadge(status, note) {
  const badge = el(
    "span",
    { class: `badge status-${status}`, dataset: { status } },
    el("span", { class: "sym", "aria-hidden": "true", text: SYMBOLS[status] || "?" }),
    el("span", { class: "word", text: status }),
  );
  if (note) badge.append(el("span", { class: "note", text: `(${note})` }));
  return badge;
}

/** A progress bar with its percentage (and an optional label) printed beside it. */
export function progressBar(fraction, { status = "running", label } = {}) {
  const pct = Math.max(0, Math.min(1, Number(fraction) || 0)) * 100;
  const fillBar = el("div", { class: "fill" });
  fillBar.style.width = `${pct.toFixed(1)}%`;
  const text = label ? `${pct.toFixed(0)}% · ${label}` : `${pct.toFixed(0)}%`;
  return el(
    "div",
    {
      class: `progress is-${status}`,
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": pct.toFixed(0),
      "aria-valuetext": text,
    },
    el("div", { class: "track" }, fillBar),
    el("span", { class: "label", text }),
  );
}

/** Seconds as "42 s", "3 min 05 s", "2 h 07 min". */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** Seconds between two ISO timestamps (the second defaults to now); null without a start. */
export function secondsBetween(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? Date.parse(endIso) : Date.now();
  return (end - Date.parse(startIso)) / 1000;
}

/** An ISO timestamp as local "YYYY-MM-DD HH:MM" (or "HH:MM:SS" with `timeOnly`). */
export function fmtTime(iso, { timeOnly = false } = {}) {
  if (!iso) return "—";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (timeOnly) return `${time}:${pad(d.getSeconds())}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** A number with thousands separators (integers) or a few significant digits. */
export function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return "—";
  const n = Number(x);
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return Math.abs(n) >= 1000 ? Math.round(n).toLocaleString("en-US") : n.toPrecision(digits);
}

/** A fraction as a percentage ("72.1%"). */
export function fmtPct(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return "—";
  return `${(Number(x) * 100).toFixed(digits)}%`;
}

/** Bytes as "601 kB" / "1.2 GB". */
export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = Number(n);
  let i = 0;
  while (value >= 1000 && i < units.length - 1) {
    value /= 1000;
    i += 1;
  }
  return `${value >= 100 || i === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[i]}`;
}

/** Show an API error (its message and the field it names) in the alert element `node`. */
export function showError(node, err) {
  const children = [el("span", { class: "message", text: err.message || String(err) })];
  if (err.param) children.push(el("span", { text: " — field: " }), el("span", { class: "param", text: err.param }));
  node.replaceChildren(...children);
  node.dataset.param = err.param || "";
  node.hidden = false;
}

/** Hide an alert element. */
export function clearError(node) {
  node.replaceChildren();
  node.hidden = true;
}

/** The student a job trains, in a few words. */
export function studentName(spec) {
  const student = (spec && spec.student) || {};
  return student.preset || student.path || "—";
}

/** The data a job uses: its dataset id, else its task. */
export function datasetName(job) {
  const data = (job.spec && job.spec.data) || {};
  return job.dataset || data.task || "—";
}

/**
 * Run `fn` now and then every `ms` while the page is visible, never overlapping; `fn` returning false stops
 * the loop. Returns a function that runs it again at once (or right after the current run).
 */
export function every(ms, fn) {
  let timer = null;
  let busy = false;
  let again = false;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    clearTimeout(timer);
    let keep = true;
    try {
      keep = (await fn()) !== false;
    } catch (err) {
      console.error(err);
    }
    busy = false;
    if (!keep) {
      stopped = true;
    } else if (again) {
      again = false;
      run();
    } else {
      timer = setTimeout(tick, ms);
    }
  };
  const tick = () => (document.hidden ? (timer = setTimeout(tick, ms)) : run());
  run();
  return run;
}
