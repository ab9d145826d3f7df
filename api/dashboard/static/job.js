// One job: header with Cancel/Retry, stage timeline, teacher and pseudo-label statistics, training curves,
// evaluation, checkpoints and the live event log (SSE read with fetch, so every event type arrives).
import {
  STAGES, STAGE_TITLES, FINISHED, api, el, fill, statusBadge, progressBar, fmtDuration, fmtTime, fmtNum,
  fmtPct, fmtBytes, secondsBetween, studentName, datasetName, showError, toLogin, every,
} from "./common.js";
import { lineChart, histogram, intervalBars } from "./charts.js";

const POLL_MS = 2500;
const METRICS_MIN_GAP_MS = 2000;
const MAX_LOG_ROWS = 2000;
const MODEL_ORDER = ["teacher", "sft", "rl"];
const MODEL_TITLES = { teacher: "teacher", sft: "SFT student", rl: "RL student" };
const TRAINING = new Set(["sft", "reward_model", "rl"]);

const jobId = document.querySelector("main").dataset.jobId;
const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
const cancelButton = document.getElementById("cancel-button");
const retryButton = document.getElementById("retry-button");
const jobError = document.getElementById("job-error");
let job = null;
let signature = "";
let lastMetricsAt = 0;
let lastTrainingStep = "";
let evaluations = [];
let checkpoints = [];
let teacherRetries = 0;
let teacherWarnings = 0;
let streaming = false;
let lastSeq = 0;
const seenSeqs = new Set();

// --- small renderers ---------------------------------------------------------------------------------------
function stat(name, value, { bad = false, title } = {}) {
  return el("div", { class: bad ? "stat bad" : "stat", title }, el("div", { class: "value", text: value }), el("div", { class: "name", text: name }));
}

function fact(name, value) {
  return el("div", {}, el("dt", { text: name }), el("dd", {}, value));
}

function stageOf(name) {
  return job && job.stages.find((s) => s.name === name);
}

function actionMessage(text, isError = false) {
  const node = document.getElementById("action-message");
  node.textContent = text;
  node.className = isError ? "alert" : "muted";
}

// --- header -------------------------------------------------------------------------------------------------
function renderHeader() {
  const running = !FINISHED.has(job.status);
  document.title = `Job ${job.id.slice(0, 8)} · ${job.status} · twofold`;
  fill("job-id", job.id);
  fill("job-status", statusBadge(job.status, job.cancel_requested && running ? "cancel requested" : null));
  const stage = job.current_stage ? STAGE_TITLES[job.current_stage] || job.current_stage : null;
  fill("job-progress", progressBar(job.progress, { status: job.status, label: job.status === "succeeded" ? "all stages" : stage }));
  const spec = job.spec || {};
  const rl = spec.rl || {};
  const tags = Object.entries(job.metadata || {}).map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }));
  fill(
    "job-facts",
    fact("Preset", job.preset || "custom spec"),
    fact("Dataset", datasetName(job)),
    fact("Teacher model", (spec.teacher && spec.teacher.model) || "—"),
    fact("Student", studentName(spec)),
    fact("RL", rl.algo ? `${rl.algo.toUpperCase()} on ${rl.reward || "reward"} · ${rl.steps ?? "?"} steps` : "—"),
    fact("Created", fmtTime(job.created_at)),
    fact("Started", fmtTime(job.started_at)),
    fact("Finished", fmtTime(job.finished_at)),
    fact("Duration", job.started_at ? fmtDuration(secondsBetween(job.started_at, job.finished_at)) : "not started"),
    fact("Metadata", tags.length ? tags : "—"),
  );
  const canCancel = (job.status === "pending" || job.status === "running") && !job.cancel_requested;
  cancelButton.disabled = !canCancel;
  cancelButton.title = canCancel ? "Stop this job" : running ? "cancellation already requested" : `the job has ${job.status}`;
  const canRetry = job.status === "failed" || job.status === "cancelled";
  retryButton.disabled = !canRetry;
  retryButton.title = canRetry ? "Resume from the first unfinished stage" : "only failed or cancelled jobs can be retried";
  if (job.error) {
    const where = job.error.stage ? ` in stage ${job.error.stage}` : "";
    jobError.textContent = `Failed${where}: ${job.error.message} (${job.error.code})`;
    jobError.hidden = false;
  } else {
    jobError.hidden = true;
  }
}

// --- stages -------------------------------------------------------------------------------------------------
function stageTiming(s) {
  const took = fmtDuration(secondsBetween(s.started_at, s.finished_at));
  if (s.status === "succeeded") return `took ${took}`;
  if (s.status === "running") {
    const eta = s.eta_seconds === null || s.eta_seconds === undefined ? "estimating" : fmtDuration(s.eta_seconds);
    return `running for ${took} · ETA ${eta}`;
  }
  if (s.status === "failed") return s.started_at ? `failed after ${took}` : "failed";
  if (s.status === "cancelled") return s.started_at ? `cancelled after ${took}` : "cancelled";
  return "waiting";
}

function renderStages() {
  const order = (s) => (STAGES.indexOf(s.name) + 1 || 99);
  const stages = [...job.stages].sort((a, b) => order(a) - order(b));
  fill(
    "stages",
    stages.map((s, i) => {
      const counts = s.progress_total ? `${fmtNum(s.progress_done)}/${fmtNum(s.progress_total)}` : null;
      const attempt = s.attempt > 1 ? ` · attempt ${s.attempt}` : "";
      return el(
        "li",
        { class: `status-${s.status}`, dataset: { stage: s.name, status: s.status } },
        el("div", { class: "stage-head" }, el("span", { class: "step", text: `${i + 1}.` }), el("span", { class: "stage-name", text: STAGE_TITLES[s.name] || s.name })),
        el("code", { text: `${s.name} · ${s.queue}`, title: `runs on the ${s.queue} queue` }),
        statusBadge(s.status),
        progressBar(s.progress, { status: s.status, label: counts }),
        el("div", { class: "timing", text: stageTiming(s) + attempt }),
        s.error ? el("div", { class: "stage-error", text: s.error }) : null,
      );
    }),
  );
}

// --- teacher sampling ---------------------------------------------------------------------------------------
/** The sampling setup in a few words ("temperatures 0.7, 1 · 2 samples each · up to 48 tokens"). */
function sampling() {
  const t = (job.spec && job.spec.teacher) || {};
  const temps = Array.isArray(t.temperatures) ? t.temperatures.join(", ") : "?";
  return `temperatures ${temps} · ${t.n ?? "?"} samples each · up to ${t.max_tokens ?? "?"} tokens`;
}

function renderTeacher() {
  const s = stageOf("teacher_sampling");
  const metrics = (s && s.metrics) || {};
  const usage = metrics.usage;
  const note = document.getElementById("teacher-note");
  if (usage) {
    const stats = [
      stat("requests", fmtNum(usage.requests)),
      stat("samples", fmtNum(usage.samples)),
      stat("prompt tokens", fmtNum(usage.prompt_tokens)),
      stat("completion tokens", fmtNum(usage.completion_tokens)),
      stat("errors", fmtNum(usage.errors), { bad: usage.errors > 0 }),
      stat("retries", fmtNum(usage.retries), { bad: usage.retries > 0 }),
    ];
    fill("teacher-stats", stats);
    const parts = [sampling()];
    if (metrics.samples > 0 && metrics.parseable !== undefined) parts.push(`${fmtPct(metrics.parseable / metrics.samples)} of answers parsed`);
    if (metrics.reused) parts.push(`${fmtNum(metrics.reused)} samples reused from an earlier attempt`);
    note.textContent = parts.join(" · ");
    return;
  }
  fill(
    "teacher-stats",
    stat("requests", "—"),
    stat("samples so far", s ? `${fmtNum(s.progress_done)}/${fmtNum(s.progress_total)}` : "—"),
    stat("prompt tokens", "—"),
    stat("completion tokens", "—"),
    stat("warnings", fmtNum(teacherWarnings), { bad: teacherWarnings > 0 }),
    stat("retries", fmtNum(teacherRetries), { bad: teacherRetries > 0 }),
  );
  const later = "request and token counts appear when the stage finishes; retries so far are counted from the event log";
  note.textContent = `${sampling()} · ${s && s.status === "pending" ? "not started" : later}`;
}

// --- pseudo-labels ------------------------------------------------------------------------------------------
async function loadLabels() {
  const page = await api(`${base}/reward-labels?limit=1`);
  const sum = page.summary;
  const labeling = stageOf("labeling");
  const ready = sum.labels > 0 || (labeling && labeling.status === "succeeded");
  fill(
    "label-stats",
    stat("questions kept", ready ? `${fmtNum(sum.questions_kept)} of ${fmtNum(sum.questions_total)}` : "—"),
    stat("questions dropped", ready ? fmtNum(sum.questions_dropped) : "—"),
    stat("labels", ready ? fmtNum(sum.labels) : "—"),
    stat("mean agreement", ready ? fmtPct(sum.mean_agreement) : "—"),
    stat("accuracy vs gold", sum.accuracy_vs_gold === null ? "no gold" : fmtPct(sum.accuracy_vs_gold), {
      title: "share of pseudo-labels that match the label the gold answer would give",
    }),
    stat("positive rate", ready ? fmtPct(sum.positive_rate) : "—"),
  );
  if (ready && sum.labels > 0) {
    const pos = el("div", { class: "pos" });
    pos.style.width = `${(sum.positive / sum.labels) * 100}%`;
    const neg = el("div", { class: "neg" });
    neg.style.width = `${(sum.negative / sum.labels) * 100}%`;
    fill(
      "label-balance",
      el(
        "div",
        { class: "balance", role: "img", "aria-label": `label balance: ${sum.positive} positive, ${sum.negative} negative` },
        el("div", { class: "bar" }, pos, neg),
        el(
          "div",
          { class: "legend" },
          el("span", { text: `▨ positive ${fmtNum(sum.positive)} (${fmtPct(sum.positive / sum.labels, 0)})`, title: "answer agrees with the teacher's majority" }),
          el("span", { text: `□ negative ${fmtNum(sum.negative)} (${fmtPct(sum.negative / sum.labels, 0)})` }),
        ),
      ),
    );
  } else {
    fill("label-balance");
  }
  const bins = ready ? sum.agreement_histogram.map((b) => ({ start: b.bin_start, end: b.bin_end, count: b.count })) : [];
  fill("agreement-chart", histogram({ name: "agreement", title: "Agreement histogram", bins, xLabel: "teacher majority vote share per question", yLabel: "questions" }));
}

// --- reward model, training curves --------------------------------------------------------------------------
function renderReward() {
  const s = stageOf("reward_model");
  const m = (s && s.metrics) || {};
  fill(
    "reward-stats",
    stat("held-out accuracy", fmtPct(m.accuracy), { title: "accuracy of the reward model on held-out questions' pseudo-labels" }),
    stat("pairwise accuracy", fmtPct(m.pairwise_accuracy), { title: "a positive response scored above a negative one" }),
    stat("held-out examples", fmtNum(m.n)),
    stat("training steps", fmtNum(m.steps)),
    stat("train questions", fmtNum(m.train_questions)),
    stat("held-out questions", fmtNum(m.holdout_questions)),
  );
}

async function loadMetrics() {
  lastMetricsAt = Date.now();
  const page = await api(`${base}/metrics`);
  const curves = new Map();
  for (const p of page.data) {
    const key = `${p.stage}/${p.name}`;
    if (!curves.has(key)) curves.set(key, []);
    curves.get(key).push({ x: p.step, y: p.value });
  }
  const series = (stage, names) =>
    names.map(([name, label]) => ({ name: label, points: curves.get(`${stage}/${name}`) || [] })).filter((s, i) => i === 0 || s.points.length);
  const draw = (id, opts) => fill(id, lineChart(opts));
  draw("sft-loss-chart", { name: "sft-loss", title: "SFT loss", series: series("sft", [["loss", "loss"], ["loss_ema", "loss (EMA)"]]) });
  draw("rm-loss-chart", { name: "rm-loss", title: "Reward-model loss", series: series("reward_model", [["loss", "loss"], ["bce", "BCE"], ["bt", "Bradley–Terry"]]) });
  draw("rm-accuracy-chart", {
    name: "rm-accuracy", title: "Reward-model accuracy", percent: true, yDomain: [0, 1], series: series("reward_model", [
      ["accuracy", "train batch"], ["holdout_accuracy", "held-out"], ["holdout_pairwise_accuracy", "held-out pairwise"],
    ]),
  });
  draw("rl-reward-chart", { name: "rl-reward", title: "RL reward", series: series("rl", [["reward", "mean reward"]]) });
  draw("rl-kl-chart", { name: "rl-kl", title: "RL KL to the SFT policy", series: series("rl", [["kl", "KL"]]) });
  draw("rl-value-chart", { name: "rl-value-loss", title: "RL value loss", series: series("rl", [["value_loss", "value loss"]]) });
  draw("rl-policy-chart", { name: "rl-policy-loss", title: "RL policy loss", series: series("rl", [["policy_loss", "policy loss"]]) });
  if (page.has_more) document.getElementById("curves-card").querySelector("h2").textContent = "Training curves (first 10,000 points)";
}

// --- evaluation, checkpoints --------------------------------------------------------------------------------
async function loadEvaluations() {
  const page = await api(`${base}/evaluations?limit=100`);
  evaluations = page.data;
  renderCheckpoints();
  const rows = [...page.data].sort((a, b) => a.benchmark.localeCompare(b.benchmark) || MODEL_ORDER.indexOf(a.model) - MODEL_ORDER.indexOf(b.model));
  const benchmarks = [...new Set(rows.map((r) => r.benchmark))];
  const groups = benchmarks.map((bench) => ({
    label: bench,
    bars: rows.filter((r) => r.benchmark === bench).map((r) => ({ label: MODEL_TITLES[r.model] || r.model, value: r.accuracy, lo: r.ci95[0], hi: r.ci95[1], n: r.n })),
  }));
  fill("evaluation-chart", rows.length ? intervalBars({ name: "evaluation", title: "Accuracy with 95% intervals", groups }) : null);
  document.querySelector("#evaluation-table tbody").replaceChildren(
    ...rows.map((r) =>
      el(
        "tr",
        { dataset: { model: r.model, benchmark: r.benchmark } },
        el("td", { text: r.benchmark }),
        el("td", { text: MODEL_TITLES[r.model] || r.model }),
        el("td", { class: "num", text: fmtPct(r.accuracy) }),
        el("td", { class: "num", text: `${fmtPct(r.ci95[0])} – ${fmtPct(r.ci95[1])}` }),
        el("td", { class: "num", text: fmtNum(r.n) }),
      ),
    ),
  );
  document.getElementById("evaluation-table").hidden = !rows.length;
  document.getElementById("evaluation-empty").hidden = rows.length > 0;
}

async function loadCheckpoints() {
  checkpoints = (await api(`${base}/checkpoints?limit=100`)).data;
  renderCheckpoints();
}

/** Checkpoints, each policy with the evaluation of the model it holds (to choose which one to ship). */
function renderCheckpoints() {
  const scores = (c) => {
    const model = c.kind === "policy" ? c.stage : null;
    const rows = evaluations.filter((r) => r.model === model);
    return rows.length ? rows.map((r) => `${r.benchmark} ${fmtPct(r.accuracy)}`).join(", ") : "—";
  };
  document.querySelector("#checkpoints-table tbody").replaceChildren(
    ...checkpoints.map((c) =>
      el(
        "tr",
        { dataset: { checkpointId: c.id } },
        el("td", { text: STAGE_TITLES[c.stage] || c.stage }),
        el("td", { text: c.kind }),
        el("td", { class: "num", text: fmtNum(c.step) }),
        el("td", { class: "num", text: fmtBytes(c.size_bytes) }),
        el("td", { text: scores(c) }),
        el("td", { title: `saved ${fmtTime(c.created_at)}` }, el("code", { text: c.sha256.slice(0, 8), title: c.sha256 })),
        el("td", {}, el("a", { href: c.download_url, download: "", class: "download", text: "Download" })),
      ),
    ),
  );
  document.getElementById("checkpoints-table").hidden = !checkpoints.length;
  document.getElementById("checkpoints-empty").hidden = checkpoints.length > 0;
}

// --- polling ------------------------------------------------------------------------------------------------
async function poll() {
  try {
    job = await api(base);
  } catch (err) {
    showError(jobError, err);
    return err.status !== 404; // an unknown id stays unknown
  }
  renderHeader();
  renderStages();
  renderTeacher();
  renderReward();
  const sig = `${job.status}|${job.stages.map((s) => `${s.name}:${s.status}:${s.attempt}`).join(",")}`;
  // A training stage that moved on a step has new curve points.
  const step = job.stages.filter((s) => s.status === "running" && TRAINING.has(s.name)).map((s) => `${s.name}:${s.progress_done}`).join();
  const loads = [];
  if (sig !== signature) loads.push(loadLabels(), loadMetrics(), loadEvaluations(), loadCheckpoints());
  else if (step && step !== lastTrainingStep && Date.now() - lastMetricsAt > METRICS_MIN_GAP_MS) loads.push(loadMetrics());
  if (loads.length) lastTrainingStep = step;
  const results = await Promise.allSettled(loads);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) actionMessage(`Could not load part of the page: ${failed.reason.message}`, true);
  else signature = sig;
  if (!streaming && !FINISHED.has(job.status)) streamEvents();
  return true;
}
const pollNow = every(POLL_MS, poll);

// --- event log (SSE) ----------------------------------------------------------------------------------------
function appendEvent(ev) {
  if (seenSeqs.has(ev.seq)) return;
  seenSeqs.add(ev.seq);
  lastSeq = Math.max(lastSeq, ev.seq);
  if (ev.stage === "teacher_sampling" && ev.type === "teacher_retry") teacherRetries += 1;
  if (ev.stage === "teacher_sampling" && ev.level === "warning") teacherWarnings += 1;
  const wrap = document.getElementById("events-wrap");
  const atBottom = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 40;
  const tbody = document.querySelector("#events tbody");
  tbody.append(
    el(
      "tr",
      { class: `level-${ev.level}`, dataset: { seq: ev.seq, type: ev.type } },
      el("td", { class: "time", text: fmtTime(ev.created_at, { timeOnly: true }), title: ev.created_at }),
      el("td", { class: "level", text: ev.level }),
      el("td", { class: "stage", text: ev.stage || "job" }),
      el("td", { class: "type" }, el("code", { text: ev.type })),
      el("td", { class: "message", text: ev.message }),
    ),
  );
  while (tbody.children.length > MAX_LOG_ROWS) tbody.firstElementChild.remove();
  if (atBottom) wrap.scrollTop = wrap.scrollHeight;
  if (/^(stage|job|checkpoint)[._]/.test(ev.type)) pollNow();
}

function parseBlock(block) {
  const msg = { event: "message", data: [] };
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") msg.event = value;
    else if (field === "data") msg.data.push(value);
    else if (field === "id") msg.id = value;
  }
  return { ...msg, data: msg.data.join("\n") };
}

function setStreamState(text) {
  document.getElementById("events-state").textContent = text;
  document.getElementById("events-card").dataset.stream = text;
}

async function streamEvents() {
  streaming = true;
  let ended = false;
  while (!ended) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastSeq) headers["Last-Event-ID"] = String(lastSeq);
      const response = await fetch(`${base}/events?stream=true`, { headers, credentials: "same-origin" });
      if (response.status === 401) return toLogin();
      if (response.status === 404) {
        setStreamState("(no such job)");
        streaming = false;
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setStreamState("(live)");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let match;
        while ((match = /\r?\n\r?\n/.exec(buffer))) {
          const msg = parseBlock(buffer.slice(0, match.index));
          buffer = buffer.slice(match.index + match[0].length);
          if (msg.event === "end") ended = true;
          else if (msg.data) appendEvent(JSON.parse(msg.data));
        }
      }
    } catch (err) {
      setStreamState(`(reconnecting: ${err.message})`);
    }
    if (!ended) await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  streaming = false;
  setStreamState("(complete: the job has finished)");
  pollNow();
}

// --- actions ------------------------------------------------------------------------------------------------
cancelButton.addEventListener("click", async () => {
  if (!window.confirm(`Cancel job ${jobId.slice(0, 8)}? A running stage stops at its next check.`)) return;
  cancelButton.disabled = true;
  try {
    job = await api(`${base}/cancel`, { method: "POST" });
    actionMessage("Cancellation requested; the running stage stops within seconds.");
  } catch (err) {
    actionMessage(`Cancel refused: ${err.message}`, true);
  }
  pollNow();
});

retryButton.addEventListener("click", async () => {
  retryButton.disabled = true;
  try {
    job = await api(`${base}/retry`, { method: "POST" });
    actionMessage("Retrying from the first unfinished stage.");
  } catch (err) {
    actionMessage(`Retry refused: ${err.message}`, true);
  }
  pollNow();
});

streamEvents();
