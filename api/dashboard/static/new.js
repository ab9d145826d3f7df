// New job: upload a JSONL dataset; submit a preset or a spec (YAML or JSON) with the API's own validation
// messages (error.message and the field in error.param).
import { PREFIX, ApiError, api, listAll, el, fmtNum, showError, clearError } from "./common.js";

const jobForm = document.getElementById("job-form");
const presetSelect = document.getElementById("preset");
const datasetSelect = document.getElementById("dataset");
const specArea = document.getElementById("spec");
const jobErrors = document.getElementById("job-errors");
const uploadForm = document.getElementById("upload-form");
const uploadErrors = document.getElementById("upload-errors");
const uploadResult = document.getElementById("upload-result");
let presets = [];

function mode() {
  return jobForm.querySelector("input[name=mode]:checked").value;
}

function showMode() {
  document.getElementById("preset-fields").hidden = mode() !== "preset";
  document.getElementById("spec-fields").hidden = mode() !== "spec";
}

function describePreset() {
  const p = presets.find((x) => x.id === presetSelect.value);
  document.getElementById("preset-description").textContent = p ? p.description : "";
}

async function loadPresets() {
  const page = await api("/v1/presets");
  presets = page.data;
  presetSelect.replaceChildren(...presets.map((p) => el("option", { value: p.id, text: p.id })));
  describePreset();
}

async function loadDatasets(select) {
  const items = await listAll("/v1/datasets");
  const label = (d) => {
    const rows = d.row_count === null ? "" : ` · ${fmtNum(d.row_count)} rows`;
    const answers = d.has_answers ? "" : " · no answers";
    return `${d.name}${d.builtin ? " (built-in)" : ""}${rows}${answers}`;
  };
  datasetSelect.replaceChildren(
    el("option", { value: "", text: "the preset's or spec's own data" }),
    ...items.map((d) => el("option", { value: d.id, text: label(d) })),
  );
  if (select) datasetSelect.value = select;
}

/** `key=value` lines -> object; a bad line is reported like an API error. */
function parseMetadata(text) {
  const out = {};
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    const eq = line.indexOf("=");
    if (eq <= 0) {
      throw new ApiError(422, { error: { message: "write metadata as key=value, one per line", param: `metadata line ${i + 1}` } });
    }
    out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  });
  return out;
}

/** The spec textarea as an object: JSON directly, anything else through the server's YAML reader. */
async function readSpec() {
  const text = specArea.value;
  if (!text.trim()) throw new ApiError(422, { error: { message: "write a job spec, or fill in a preset's", param: "spec" } });
  try {
    return JSON.parse(text);
  } catch {
    const parsed = await api(`${PREFIX}/spec`, { method: "POST", json: { text } });
    return parsed.spec;
  }
}

jobForm.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", showMode));
presetSelect.addEventListener("change", describePreset);
document.getElementById("spec-from-preset").addEventListener("click", () => {
  const p = presets.find((x) => x.id === presetSelect.value) || presets[0];
  if (p) specArea.value = JSON.stringify(p.spec, null, 2);
});

jobForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(jobErrors);
  const button = document.getElementById("submit-job");
  button.disabled = true;
  try {
    const body = { metadata: parseMetadata(document.getElementById("metadata").value) };
    if (mode() === "preset") body.preset = presetSelect.value;
    else body.spec = await readSpec();
    if (datasetSelect.value) body.dataset = datasetSelect.value;
    const job = await api("/v1/jobs", { method: "POST", json: body });
    location.assign(`${PREFIX}/jobs/${encodeURIComponent(job.id)}`);
  } catch (err) {
    showError(jobErrors, err);
    button.disabled = false;
  }
});

uploadForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(uploadErrors);
  uploadResult.hidden = true;
  const file = document.getElementById("upload-file").files[0];
  if (!file) {
    showError(uploadErrors, { message: "choose a JSONL file", param: "file" });
    return;
  }
  const form = new FormData();
  form.append("file", file);
  const name = document.getElementById("upload-name").value.trim();
  if (name) form.append("name", name);
  const button = document.getElementById("upload-button");
  button.disabled = true;
  try {
    const ds = await api("/v1/datasets", { method: "POST", form });
    await loadDatasets(ds.id);
    uploadResult.textContent = `Uploaded “${ds.name}”: ${fmtNum(ds.row_count)} rows, ${ds.has_answers ? "with" : "without"} answers (id ${ds.id}). It is selected in the job form.`;
    uploadResult.hidden = false;
  } catch (err) {
    showError(uploadErrors, err);
  } finally {
    button.disabled = false;
  }
});

showMode();
Promise.all([loadPresets(), loadDatasets()]).catch((err) => showError(jobErrors, err));
