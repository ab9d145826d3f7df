// The jobs list: newest first, filtered by status, refreshed every few seconds.
import {
  PREFIX, STAGE_TITLES, FINISHED, api, listAll, el, statusBadge, progressBar, fmtDuration, fmtTime, secondsBetween,
  studentName, datasetName, showError, clearError, every,
} from "./common.js";

const REFRESH_MS = 3000;
const PAGE = 50;
const filter = document.getElementById("status-filter");
const tbody = document.querySelector("#jobs-table tbody");
const errorBox = document.getElementById("jobs-error");
const more = document.getElementById("jobs-more");
let older = []; // pages fetched with "Show older jobs" (not refreshed)
let hasMore = false;
const datasetNames = new Map(); // uploaded dataset id -> name (jobs carry only the id)

filter.value = new URLSearchParams(location.search).get("status") || "";

function query(after) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (filter.value) q.set("status", filter.value);
  if (after) q.set("after", after);
  return `/v1/jobs?${q}`;
}

function row(job) {
  const running = !FINISHED.has(job.status);
  const note = job.cancel_requested && running ? "cancelling" : null;
  const stage = job.current_stage ? STAGE_TITLES[job.current_stage] || job.current_stage : null;
  const tags = Object.entries(job.metadata || {}).map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }));
  const teacher = (job.spec && job.spec.teacher) || {};
  const duration = job.started_at ? fmtDuration(secondsBetween(job.started_at, job.finished_at)) : "waiting";
  return el(
    "tr",
    { dataset: { jobId: job.id, status: job.status } },
    el("td", { class: "status" }, statusBadge(job.status, note)),
    el(
      "td",
      { class: "job" },
      el("a", { href: `${PREFIX}/jobs/${encodeURIComponent(job.id)}`, text: job.id.slice(0, 8), title: job.id }),
      el("span", { class: "sub" }, job.preset ? `preset ${job.preset}` : "custom spec", " ", ...tags),
    ),
    el("td", {}, progressBar(job.progress, { status: job.status, label: job.status === "succeeded" ? null : stage })),
    el("td", { class: "teacher", text: teacher.model || "—" }),
    el("td", { class: "student", text: studentName(job.spec) }),
    el("td", { class: "dataset", text: datasetNames.get(job.dataset) || datasetName(job), title: job.dataset || undefined }),
    el("td", { class: "created", text: fmtTime(job.created_at), title: job.created_at }),
    el("td", { class: "duration", text: running && job.started_at ? `${duration} so far` : duration }),
  );
}

/** Learn the names of datasets the jobs use that are not known yet (one listing, at most a few pages). */
async function learnDatasetNames(jobs) {
  if (jobs.every((j) => !j.dataset || datasetNames.has(j.dataset))) return;
  for (const d of await listAll("/v1/datasets", 5)) datasetNames.set(d.id, d.name);
  for (const j of jobs) if (j.dataset && !datasetNames.has(j.dataset)) datasetNames.set(j.dataset, j.dataset);
}

async function refresh() {
  try {
    const page = await api(query());
    await learnDatasetNames([...page.data, ...older]);
    clearError(errorBox);
    const jobs = [...page.data, ...older.filter((o) => !page.data.some((j) => j.id === o.id))];
    tbody.replaceChildren(...jobs.map(row));
    document.getElementById("jobs-empty").hidden = jobs.length > 0;
    if (!older.length) hasMore = page.has_more;
    more.hidden = !hasMore;
    document.getElementById("refresh-note").textContent = `live · updated ${fmtTime(new Date().toISOString(), { timeOnly: true })}`;
  } catch (err) {
    showError(errorBox, err);
  }
}

const refreshNow = every(REFRESH_MS, refresh);

filter.addEventListener("change", () => {
  const url = new URL(location.href);
  if (filter.value) url.searchParams.set("status", filter.value);
  else url.searchParams.delete("status");
  history.replaceState(null, "", url);
  older = [];
  refreshNow();
});

more.addEventListener("click", async () => {
  const last = tbody.lastElementChild && tbody.lastElementChild.dataset.jobId;
  try {
    const page = await api(query(last));
    older = [...older, ...page.data];
    hasMore = page.has_more;
    refreshNow();
  } catch (err) {
    showError(errorBox, err);
  }
});
