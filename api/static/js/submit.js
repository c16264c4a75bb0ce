// The submit page: six colour and six depth slots, the model and job options, checks that mirror
// the API's 422 answers (limits from /ui/config, i.e. the server's own settings), and an upload
// with progress that ends on the job's page.

import { authHeaders, el, errorOf, formatBytes, renderError, setupKeyField } from "./common.js";

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const GROUPS = {
  views: { label: "view images", slots: "views-slots", input: "views-input" },
  depth_renders: { label: "depth render images", slots: "depths-slots", input: "depths-input" },
};

let config = null;
// field -> one entry per slot: null or {file, url, problem, width, height}
const chosen = { views: [], depth_renders: [] };

/** The rig slot a file name's stem names as a word ("03_top.png"), else null: recon.inputs.decode.slot_in_name. */
function slotInName(name) {
  const stem = name.split(/[\\/]/).pop().split(".")[0].toLowerCase();
  const found = new Set(stem.split(/[^a-z]+/).filter((t) => config.slots.includes(t)));
  return found.size === 1 ? [...found][0] : null;
}

async function fileProblem(file) {
  if (!file.name.toLowerCase().endsWith(".png")) return `'${file.name}' must have a .png extension`;
  if (file.size > config.max_file_bytes) {
    return `'${file.name}' is ${formatBytes(file.size)}; the limit is ${formatBytes(config.max_file_bytes)} per file`;
  }
  const head = new Uint8Array(await file.slice(0, 8).arrayBuffer());
  if (head.length < 8 || PNG_SIGNATURE.some((b, i) => head[i] !== b)) return `'${file.name}' is not a PNG file (bad signature)`;
  return null;
}

async function place(field, index, file) {
  const old = chosen[field][index];
  if (old && old.url) URL.revokeObjectURL(old.url);
  const entry = { file, url: null, problem: await fileProblem(file), width: 0, height: 0 };
  if (!entry.problem) entry.url = URL.createObjectURL(file);
  chosen[field][index] = entry;
  renderSlot(field, index);
}

/** Several files for one group: named ones to their slots, the rest to free slots in order. */
async function placeMany(field, files) {
  const problems = [];
  const bySlot = new Map();
  const unnamed = [];
  for (const file of files) {
    const slot = slotInName(file.name);
    if (slot === null) unnamed.push(file);
    else if (bySlot.has(slot)) problems.push(`Two files name the slot '${slot}': '${bySlot.get(slot).name}' and '${file.name}'`);
    else bySlot.set(slot, file);
  }
  const jobs = [];
  const taken = new Set();
  config.slots.forEach((slot, i) => {
    if (bySlot.has(slot)) {
      jobs.push(place(field, i, bySlot.get(slot)));
      taken.add(i);
    }
  });
  // Unnamed files fill the slots that are still empty, then (if more) the ones not just named.
  const free = config.slots.map((_, i) => i).filter((i) => !taken.has(i) && !chosen[field][i]);
  const spare = config.slots.map((_, i) => i).filter((i) => !taken.has(i) && chosen[field][i]);
  const targets = [...free, ...spare];
  unnamed.forEach((file, k) => {
    if (k < targets.length) jobs.push(place(field, targets[k], file));
  });
  if (unnamed.length > targets.length) {
    problems.push(`${files.length} ${GROUPS[field].label} chosen; there are ${config.files_per_field} slots`);
  }
  await Promise.all(jobs);
  showProblems(problems);
  refresh();
}

function renderSlot(field, index) {
  const slotName = config.slots[index];
  const entry = chosen[field][index];
  const node = document.querySelector(`#${GROUPS[field].slots} [data-slot="${slotName}"]`);
  node.classList.toggle("filled", Boolean(entry));
  node.classList.toggle("invalid", Boolean(entry && entry.problem));
  node.querySelectorAll("img, .sub, .problem, .clear").forEach((n) => n.remove());
  if (!entry) {
    node.append(el("span", { class: "sub", text: "drop or click" }));
    return;
  }
  if (entry.url) {
    const img = el("img", { alt: `${slotName} ${field === "views" ? "view" : "depth"}`, src: entry.url });
    img.addEventListener("load", () => {
      entry.width = img.naturalWidth;
      entry.height = img.naturalHeight;
      if (entry.width * entry.height > config.max_pixels) {
        entry.problem = `'${entry.file.name}' is ${entry.width}x${entry.height} pixels; the limit is ${config.max_pixels} pixels`;
        renderSlot(field, index);
        refresh();
      }
    });
    img.addEventListener("error", () => {
      entry.problem = `'${entry.file.name}' cannot be decoded as an image`;
      entry.url = null;
      renderSlot(field, index);
      refresh();
    });
    node.append(img);
  }
  node.append(el("span", { class: "sub", text: `${entry.file.name} · ${formatBytes(entry.file.size)}` }));
  if (entry.problem) node.append(el("span", { class: "problem", text: entry.problem }));
  node.append(
    el("button", {
      class: "clear", type: "button", title: "Remove", text: "×",
      onclick: (event) => {
        event.preventDefault();
        event.stopPropagation();
        if (entry.url) URL.revokeObjectURL(entry.url);
        chosen[field][index] = null;
        renderSlot(field, index);
        refresh();
      },
    }),
  );
}

function buildGroup(field) {
  const group = GROUPS[field];
  const container = document.getElementById(group.slots);
  chosen[field] = config.slots.map(() => null);
  config.slots.forEach((slotName, index) => {
    const input = el("input", { type: "file", accept: ".png,image/png" });
    input.addEventListener("change", () => {
      if (input.files.length === 1) place(field, index, input.files[0]).then(refresh);
      else if (input.files.length > 1) placeMany(field, [...input.files]);
      input.value = "";
    });
    const node = el("label", { class: "slot", "data-slot": slotName, "data-field": field },
      el("span", { class: "name", text: slotName }), input);
    node.addEventListener("dragover", (e) => { e.preventDefault(); node.classList.add("over"); });
    node.addEventListener("dragleave", () => node.classList.remove("over"));
    node.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      node.classList.remove("over");
      const files = [...e.dataTransfer.files];
      if (files.length === 1) place(field, index, files[0]).then(refresh);
      else if (files.length > 1) placeMany(field, files);
    });
    container.append(node);
    renderSlot(field, index);
  });
  // A drop anywhere else on the group's panel, and the group's multi-file chooser.
  const panel = container.closest("section");
  panel.addEventListener("dragover", (e) => e.preventDefault());
  panel.addEventListener("drop", (e) => {
    e.preventDefault();
    placeMany(field, [...e.dataTransfer.files]);
  });
  const multi = document.getElementById(group.input);
  multi.addEventListener("change", () => {
    placeMany(field, [...multi.files]);
    multi.value = "";
  });
}

function buildOptions() {
  const models = document.getElementById("models");
  for (const model of config.model_types) {
    const note = model === config.spec_default_model_type ? " (API default)" : "";
    models.append(el("label", {},
      el("input", { type: "radio", name: "model_type", value: model, checked: model === config.page_model_type }),
      ` ${model}${note}`));
  }
  const faces = document.getElementById("target-faces");
  faces.min = config.options.target_faces.min;
  faces.max = config.options.target_faces.max;
  document.querySelector('label[for="target-faces"]').textContent +=
    ` (${config.options.target_faces.min}-${config.options.target_faces.max})`;
  const size = document.getElementById("texture-size");
  for (const choice of config.options.texture_size.choices) size.append(el("option", { value: choice, text: `${choice} px` }));
  const formats = document.getElementById("formats");
  for (const name of config.options.formats.choices) {
    formats.append(el("label", {},
      el("input", { type: "checkbox", name: "formats", value: name, checked: config.options.formats.default.includes(name) }),
      ` ${name}`));
  }
  document.querySelector(".options").addEventListener("input", refresh);
}

/** The job options as the API takes them, plus a message per invalid field (the API's 422 fields). */
function readOptions() {
  const fields = {};
  const errors = {};
  const faces = document.getElementById("target-faces").value.trim();
  if (faces) {
    const n = Number(faces);
    const { min, max } = config.options.target_faces;
    if (!Number.isInteger(n) || n < min || n > max) errors.target_faces = `an integer from ${min} to ${max}`;
    else fields.target_faces = String(n);
  }
  const size = document.getElementById("texture-size").value;
  if (size) fields.texture_size = size;
  const formats = [...document.querySelectorAll('input[name="formats"]:checked')].map((i) => i.value);
  const defaults = config.options.formats.default;
  if (!formats.length) errors.formats = "choose at least one format";
  else if (formats.length !== defaults.length || formats.some((f) => !defaults.includes(f))) fields.formats = formats.join(",");
  return { fields, errors };
}

/** Everything the API would refuse with a 422, as messages (empty = ready to submit). */
function problems() {
  const out = [];
  let total = 0;
  for (const field of Object.keys(GROUPS)) {
    const entries = chosen[field].filter(Boolean);
    if (entries.length !== config.files_per_field) {
      out.push(`Expected ${config.files_per_field} ${GROUPS[field].label}, got ${entries.length}`);
    }
    for (const entry of entries) {
      total += entry.file.size;
      if (entry.problem) out.push(entry.problem);
    }
  }
  if (total > config.max_request_bytes) {
    out.push(`The upload is ${formatBytes(total)}; the limit is ${formatBytes(config.max_request_bytes)} per request`);
  }
  const { errors } = readOptions();
  for (const [name, message] of Object.entries(errors)) out.push(`${name}: ${message}`);
  return { list: out, total };
}

function refresh() {
  const { list, total } = problems();
  const { errors } = readOptions();
  for (const name of ["target_faces", "texture_size", "formats"]) {
    document.getElementById(`${name.replace("_", "-")}-err`).textContent = errors[name] || "";
  }
  const count = Object.values(chosen).reduce((n, entries) => n + entries.filter(Boolean).length, 0);
  document.getElementById("summary").textContent =
    `${count} of ${2 * config.files_per_field} files, ${formatBytes(total)}` + (list.length ? ` · ${list[0]}` : " · ready");
}

function showProblems(list, title = "") {
  const box = document.getElementById("problems");
  box.replaceChildren();
  if (!list.length) return;
  box.append(renderError({
    code: "VALIDATION_FAILED",
    message: title || "Some files or options need attention before submitting",
    details: { problems: list },
    suggestion: `Upload exactly ${config.files_per_field} view images and ${config.files_per_field} depth render images, PNG, at most ${formatBytes(config.max_file_bytes)} each.`,
  }));
}

function submit(event) {
  event.preventDefault();
  const { list } = problems();
  if (list.length) {
    showProblems(list);
    return;
  }
  showProblems([]);
  const form = new FormData();
  // Each file is named after the slot the user put it in, so the server's name-based slot
  // assignment (recon.inputs.decode.assign_slots) keeps the page's choice.
  for (const field of Object.keys(GROUPS)) {
    chosen[field].forEach((entry, i) => form.append(field, entry.file, `${config.slots[i]}.png`));
  }
  form.append("model_type", document.querySelector('input[name="model_type"]:checked').value);
  for (const [name, value] of Object.entries(readOptions().fields)) form.append(name, value);

  const button = document.getElementById("submit");
  const bar = document.getElementById("upload-progress");
  const summary = document.getElementById("summary");
  button.disabled = true;
  bar.classList.remove("hidden");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/jobs");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    const pct = Math.round((100 * e.loaded) / e.total);
    bar.firstElementChild.style.width = `${pct}%`;
    summary.textContent = `Uploading… ${pct}% of ${formatBytes(e.total)}`;
  });
  xhr.addEventListener("load", async () => {
    const response = new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText });
    if (xhr.status >= 200 && xhr.status < 300) {
      const { job_id: jobId } = await response.json();
      summary.textContent = `Job ${jobId} submitted`;
      window.location.assign(`/ui/jobs/${encodeURIComponent(jobId)}`);
      return;
    }
    button.disabled = false;
    bar.classList.add("hidden");
    refresh();
    const box = document.getElementById("problems");
    box.replaceChildren(renderError(await errorOf(response), `The server refused the job (HTTP ${xhr.status})`));
  });
  xhr.addEventListener("error", () => {
    button.disabled = false;
    bar.classList.add("hidden");
    document.getElementById("problems").replaceChildren(renderError({
      code: "NETWORK_ERROR", message: "The upload did not reach the server", details: {},
      suggestion: "Check that the API is running and try again.",
    }));
  });
  xhr.send(form);
}

async function main() {
  setupKeyField(document.getElementById("api-key"));
  const response = await fetch("/ui/config");
  if (!response.ok) {
    document.querySelector("main").prepend(renderError(await errorOf(response), "The page could not load its settings"));
    return;
  }
  config = await response.json();
  buildGroup("views");
  buildGroup("depth_renders");
  buildOptions();
  document.getElementById("submit-form").addEventListener("submit", submit);
  refresh();
  document.body.dataset.ready = "true";
}

main();
