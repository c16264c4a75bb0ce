// A job's page (/ui/jobs/{job_id}): live status from GET /jobs/{id}/events (EventSource, or a
// fetch stream when an API key must be sent, or polling GET /jobs/{id} when neither works), the
// two-step cancel, the error object, and when completed: the GLB in <model-viewer>, the turntable,
// the quality table per view and the ZIP. Files come from /jobs/{id}/files/{model}/{name} as blob
// URLs, because <model-viewer> and <img> cannot send the API key header.

import { apiFetch, apiKey, el, errorOf, renderError, setupKeyField } from "./common.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_MS = 2000;
const MODEL_VIEWER = "/static/vendor/model-viewer/model-viewer.min.js";

const jobId = decodeURIComponent(window.location.pathname.replace(/\/+$/, "").split("/").pop());
const jobPath = `/jobs/${encodeURIComponent(jobId)}`;
const $ = (id) => document.getElementById(id);

let finished = false; // a terminal status was shown
let resultsShown = false;
let generation = 0; // bumps when the key changes: older streams and polls stop
let stage = null;

function when(value) {
  if (!value) return "-";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

// Every status shown, as "status/stage" (the browser test reads it to see live progress).
window.jobTimeline = [];

function showStatus(body) {
  const status = body.status;
  if ("stage" in body) stage = body.stage;
  window.jobTimeline.push(`${status}/${status === "processing" ? stage : ""}/${body.progress}`);
  $("status-badge").textContent = status;
  $("status-badge").className = `badge ${status}`;
  document.title = `Job ${jobId} (${status}) - recon-service`;
  const progress = Math.max(0, Math.min(100, Number(body.progress) || 0));
  $("job-progress").firstElementChild.style.width = `${progress}%`;
  $("progress-text").textContent = `${progress}%`;
  $("stage").textContent = TERMINAL.has(status) ? "-" : stage || (status === "queued" ? "waiting for a worker" : "-");
  $("current-model").textContent = body.current_model || "-";
  $("created-at").textContent = when(body.created_at);
  $("updated-at").textContent = when(body.updated_at);
  if (body.options && Object.keys(body.options).length) {
    $("options").textContent = Object.entries(body.options)
      .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`).join(", ");
  }
  renderModels(body.models);
  $("job-error").replaceChildren(body.error ? renderError(body.error, "The job failed") : "");
  const cancellable = status === "queued" || status === "processing";
  $("cancel").classList.toggle("hidden", !cancellable);
  if (!cancellable) $("cancel-confirm").classList.add("hidden");
  if (TERMINAL.has(status)) {
    finished = true;
    $("live-note").textContent = "";
    if (status === "completed" && !resultsShown) {
      resultsShown = true;
      showResults(body);
    }
  }
  document.body.dataset.status = status;
}

function renderModels(models) {
  const box = $("models-table");
  if (!Array.isArray(models) || !models.length) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(el("table", { class: "quality" },
    el("thead", {}, el("tr", {}, ["Model", "Status", "Progress"].map((h) => el("th", { text: h })))),
    el("tbody", {}, models.map((m) => el("tr", {},
      el("td", { text: m.model }),
      el("td", {}, el("span", { class: `badge ${m.status}`, text: m.status })),
      el("td", { class: "num", text: `${m.progress}%` }))))));
}

// ---- live status -------------------------------------------------------------------------------

/** One SSE block ("event: status\ndata: {...}") from the fetch stream. */
function handleBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const [name, ...rest] = line.split(":");
    const value = rest.join(":").replace(/^ /, "");
    if (name === "event") event = value;
    else if (name === "data") data.push(value);
  }
  if (event === "status" && data.length) showStatus(JSON.parse(data.join("\n")));
}

async function followStream(gen) {
  $("live-note").textContent = "Live updates";
  try {
    const response = await apiFetch(`${jobPath}/events`, { headers: { Accept: "text/event-stream" } });
    if (response.status === 401 || response.status === 404) {
      // The status endpoint gives the same answer with its error object (or the events route is missing).
      return poll(gen);
    }
    if (!response.ok || !response.body) return poll(gen);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (gen === generation) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleBlock(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    reader.cancel().catch(() => {});
  } catch {
    /* connection lost: poll below */
  }
  if (!finished && gen === generation) setTimeout(() => poll(gen), 1000);
}

function followEventSource(gen) {
  $("live-note").textContent = "Live updates";
  const source = new EventSource(`${jobPath}/events`);
  let received = false;
  source.addEventListener("status", (e) => {
    received = true;
    if (gen !== generation) return source.close();
    const body = JSON.parse(e.data);
    showStatus(body);
    if (TERMINAL.has(body.status)) source.close();
  });
  source.addEventListener("error", () => {
    // Never connected, or the server refused the stream: poll instead. A dropped stream that had
    // been working reconnects by itself (EventSource's own retry).
    if (!received || source.readyState === EventSource.CLOSED) {
      source.close();
      if (!finished && gen === generation) poll(gen);
    }
  });
}

async function poll(gen) {
  if (gen !== generation || finished) return;
  $("live-note").textContent = `Checking every ${POLL_MS / 1000} s`;
  try {
    const response = await apiFetch(jobPath);
    if (response.ok) {
      showStatus(await response.json());
    } else {
      const error = await errorOf(response);
      $("job-error").replaceChildren(renderError(error, "The status could not be read"));
      if (response.status === 401 || response.status === 404) {
        $("status-badge").textContent = response.status === 404 ? "not found" : "locked";
        return; // a new key (apikeychange) starts again
      }
    }
  } catch {
    /* network blip: try again */
  }
  if (!finished) setTimeout(() => poll(gen), POLL_MS);
}

function follow() {
  generation += 1;
  const gen = generation;
  if (!apiKey() && "EventSource" in window) followEventSource(gen);
  else followStream(gen);
}

// ---- cancel (the spec's two steps) -------------------------------------------------------------

async function cancelStep(confirm) {
  $("cancel-error").replaceChildren();
  const options = { method: "POST" };
  if (confirm) {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify({ confirm: true });
  }
  const response = await apiFetch(`${jobPath}/cancel`, options);
  if (!response.ok) {
    $("cancel-error").replaceChildren(renderError(await errorOf(response), "The job could not be cancelled"));
    $("cancel-confirm").classList.add("hidden");
    return;
  }
  const body = await response.json();
  $("cancel-confirm").classList.toggle("hidden", confirm);
  $("live-note").textContent = body.message || "";
  if (confirm) {
    const status = await apiFetch(jobPath);
    if (status.ok) showStatus(await status.json());
  }
}

// ---- results -----------------------------------------------------------------------------------

function fileUrl(model, name) {
  return `${jobPath}/files/${encodeURIComponent(model)}/${encodeURIComponent(name)}`;
}

// Answers worth asking again: an API replica whose view of the job is a moment behind (409), or
// one that is busy or briefly cut off from storage (429, 502-504); also a dropped connection.
const TRANSIENT = new Set([409, 429, 502, 503, 504]);
const FILE_ATTEMPTS = 4;

/** A blob URL of one result file, or null when it does not exist (older jobs, other formats). */
async function blobUrl(model, name) {
  for (let attempt = 1; attempt <= FILE_ATTEMPTS; attempt++) {
    try {
      const response = await apiFetch(fileUrl(model, name));
      if (response.ok) return URL.createObjectURL(await response.blob());
      if (!TRANSIENT.has(response.status)) return null;
    } catch {
      /* network error: try again */
    }
    await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** (attempt - 1)));
  }
  return null;
}

async function image(model, name, caption) {
  const url = await blobUrl(model, name);
  return url
    ? el("figure", {}, el("img", { src: url, alt: caption }), el("figcaption", { text: caption }))
    : el("span", { class: "muted", text: "-" });
}

let viewerModule = null;

async function viewer(model) {
  const box = el("div", { class: "viewer" });
  const url = await blobUrl(model, "mesh.glb");
  if (!url) {
    box.append(el("p", { class: "muted", text: "No mesh.glb for this model (not among the job's formats)." }));
    return box;
  }
  viewerModule = viewerModule || import(MODEL_VIEWER);
  await viewerModule;
  const mv = el("model-viewer", {
    src: url, alt: `Reconstructed mesh (${model})`, "camera-controls": true, "shadow-intensity": "0.6",
    exposure: "1", "interaction-prompt": "none", "data-model": model,
  });
  mv.addEventListener("load", () => {
    mv.dataset.loaded = "true";
    document.body.dataset.modelsLoaded = String(Number(document.body.dataset.modelsLoaded || 0) + 1);
  });
  mv.addEventListener("error", (e) => {
    mv.dataset.loaded = "error";
    box.append(renderError({ code: "VIEWER_ERROR", message: "The 3D viewer could not load the mesh",
      details: { type: (e.detail && e.detail.type) || "unknown" }, suggestion: "Download the ZIP and open mesh.glb locally." }));
  });
  box.append(mv);
  return box;
}

function number(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "-";
}

async function qualityTable(model) {
  const url = await blobUrl(model, "quality.json");
  if (!url) return el("p", { class: "muted", text: "No quality report." });
  const report = await (await fetch(url)).json();
  URL.revokeObjectURL(url);
  const views = Array.isArray(report.views) ? report.views : [];
  const rows = await Promise.all(views.map(async (v) => {
    const slot = v.slot || v.name || "";
    const [input, render] = await Promise.all([
      image(model, `view_${slot}_input.png`, "input"),
      image(model, `view_${slot}_render.png`, "re-rendered"),
    ]);
    return el("tr", { class: "view-row", "data-slot": slot },
      el("td", { text: slot }),
      el("td", { class: "num", text: number(v.psnr, 2) }),
      el("td", { class: "num", text: number(v.ssim, 3) }),
      el("td", {}, el("div", { class: "pair" }, input, render)));
  }));
  return el("div", {},
    el("p", {},
      "Mean PSNR ", el("strong", { text: `${number(report.psnr, 2)} dB` }),
      ", SSIM ", el("strong", { text: number(report.ssim, 3) }), " ",
      report.status ? el("span", { class: `badge ${report.status}`, text: report.status }) : null,
      report.faces ? el("span", { class: "muted", text: ` · ${report.faces} faces` }) : null),
    el("table", { class: "quality", "data-model": model },
      el("thead", {}, el("tr", {}, ["View", "PSNR (dB)", "SSIM", "Input | re-rendered mesh"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)));
}

async function turntable(model) {
  const url = await blobUrl(model, "turntable.webp");
  return url
    ? el("div", { class: "turntable" }, el("img", { src: url, alt: `Turntable of the ${model} mesh`, "data-model": model }))
    : el("p", { class: "muted", text: "No turntable for this job." });
}

function downloadButton() {
  if (!apiKey()) {
    return el("a", { class: "button primary", id: "download", href: `${jobPath}/download`, download: `${jobId}.zip`, text: "Download ZIP" });
  }
  const button = el("button", { class: "primary", id: "download", type: "button", text: "Download ZIP" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Downloading…";
    const response = await apiFetch(`${jobPath}/download`);
    button.disabled = false;
    button.textContent = "Download ZIP";
    if (!response.ok) {
      button.after(renderError(await errorOf(response), "The download failed"));
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    el("a", { href: url, download: `${jobId}.zip` }).click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
  return button;
}

async function showResults(body) {
  const models = Array.isArray(body.models) && body.models.length
    ? body.models.map((m) => m.model) : [body.current_model].filter(Boolean);
  const results = $("results");
  results.append(el("section", { class: "panel" },
    el("h2", { text: "Results" }),
    el("div", { class: "actions" }, downloadButton(),
      el("span", { class: "muted", text: `All files of ${models.join(" and ")} in one ZIP.` }))));
  for (const model of models) {
    const panel = el("section", { class: "panel", "data-model": model }, el("h2", { text: model }));
    results.append(panel);
    const [view, turn, table] = await Promise.all([viewer(model), turntable(model), qualityTable(model)]);
    panel.append(el("div", { class: "result-grid" }, view, turn), el("h2", { text: "Quality per view", style: "margin-top:1rem" }), table);
  }
  document.body.dataset.results = "shown";
}

function main() {
  setupKeyField($("api-key"));
  $("job-id").textContent = jobId;
  $("share-link").href = window.location.href;
  $("share-link").textContent = window.location.href;
  $("cancel").addEventListener("click", () => cancelStep(false));
  $("cancel-yes").addEventListener("click", () => cancelStep(true));
  $("cancel-no").addEventListener("click", () => $("cancel-confirm").classList.add("hidden"));
  document.addEventListener("apikeychange", () => {
    finished = false;
    follow();
  });
  follow();
}

main();
