// facerank page: upload (file picker, drag-and-drop or paste) -> POST /api/search -> render.
// Every text from the server or the file name goes through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, file: null, busy: false };

function setState(name) { document.body.dataset.state = name; }

function formatBytes(n) {
  const MiB = 1024 * 1024;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n.toLocaleString("en-US")} bytes`;
}

function fmt(x, digits = 3) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "—";
}

// a match probability as people read it (same rule as the CLI's format_probability)
function pct(p) {
  if (typeof p !== "number" || !isFinite(p)) return "—";
  if (p >= 0.9995) return "> 99.9 %";
  if (p < 0.0005) return "< 0.1 %";
  return `${(100 * p).toFixed(1)} %`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  $("status").textContent = "";
  setState("error");
}

function clearResults() {
  // a failed search must not leave the previous probe's matches on screen
  $("probe").hidden = true;
  $("results").replaceChildren();
  $("empty").hidden = false;
  $("method").textContent = "";
  $("explain").hidden = true;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function loadInfo() {
  try {
    const resp = await fetch("/api/info");
    const info = await resp.json();
    if (!resp.ok) throw new Error(info.error || `server answered ${resp.status}`);
    state.info = info;
    $("gallery-info").textContent =
      `gallery “${info.gallery}”: ${info.images} images of ${info.identities} identities` +
      ` · ${info.stage2 === "none" ? "Stage 1 only" : info.stage2}`;
    $("limit").textContent =
      `JPEG, PNG, WebP, BMP, TIFF or GIF · up to ${info.max_upload.replace(/ /g, "\u00a0")}`;
    if (info.stage2_note) {
      $("stage2-note").textContent = info.stage2_note;
      $("stage2-note").hidden = false;
    }
    const k = $("k");
    if ([...k.options].some((o) => Number(o.value) === info.default_k)) {
      k.value = String(info.default_k);
    }
    setState("ready");
  } catch (err) {
    showError(`Could not load the gallery information: ${err.message}`);
  }
}

async function search(file) {
  if (!file) return;
  state.file = file;
  clearError();
  clearResults();
  const limit = state.info ? state.info.max_upload_bytes : Infinity;
  if (file.size > limit) {
    // the server enforces the same limit; checking here saves sending the bytes
    showError(`upload is larger than the ${formatBytes(limit)} limit; ` +
              "send a smaller photo (JPEG or PNG)");
    return;
  }
  state.busy = true;
  setState("searching");
  $("status").textContent = `searching for ${file.name || "the photo"}…`;
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  const k = Number($("k").value) || 5;
  let resp, data;
  try {
    const aligned = encodeURIComponent($("aligned").value || "none");
    resp = await fetch(`/api/search?k=${k}&aligned=${aligned}`, { method: "POST", body: form });
  } catch (err) {
    state.busy = false;
    showError(`Could not reach the server (${err.message}). Is \`facerank serve\` running?`);
    return;
  }
  try {
    data = await resp.json();
  } catch (err) {
    data = { error: `the server answered ${resp.status} ${resp.statusText} without details` };
  }
  state.busy = false;
  if (!resp.ok || data.error) {
    showError(data.error || `the server answered ${resp.status}`);
    return;
  }
  render(data);
}

function drawProbe(probe) {
  $("probe-img").src = probe.image;
  const svg = $("overlay");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${probe.width} ${probe.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const [x0, y0, x1, y1] = probe.box;
  const rect = document.createElementNS(SVG, "rect");
  rect.setAttribute("class", "box");
  rect.setAttribute("x", x0);
  rect.setAttribute("y", y0);
  rect.setAttribute("width", Math.max(0, x1 - x0));
  rect.setAttribute("height", Math.max(0, y1 - y0));
  svg.appendChild(rect);
  const r = Math.max(1.2, Math.min(probe.width, probe.height) / 160);
  let shown = 0;
  // the 68 points exist only when the lmk weighting loaded dlib's 68-point model; else the 5
  const points = probe.landmarks68.some((p) => p) ? probe.landmarks68 : probe.landmarks5;
  for (const p of points) {
    if (!p) continue;
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("class", "lmk");
    c.setAttribute("cx", p[0]);
    c.setAttribute("cy", p[1]);
    c.setAttribute("r", r);
    svg.appendChild(c);
    shown += 1;
  }
  const score = typeof probe.det_score === "number" ? probe.det_score.toFixed(2) : "—";
  $("probe-caption").textContent =
    `${probe.name} · ${probe.width}×${probe.height} · detector score ${score}` +
    ` (${probe.det_source}) · ${shown} landmarks` +
    (probe.det_source.startsWith("fallback")
      ? " · no face detected: the fallback box was used" : "") +
    (probe.confidence ? ` · URL confidence ${probe.confidence.confidence.toFixed(2)}` : "");
  $("probe").hidden = false;
}

function scoreRow(cls, label, value, title, text) {
  const row = el("div", `score ${cls}`);
  row.appendChild(el("dt", "", label));
  const dd = el("dd", "", text === undefined ? fmt(value) : text);
  if (title) dd.title = title;
  row.appendChild(dd);
  const bar = el("span", "bar");
  const fill = el("i");
  const v = typeof value === "number" && isFinite(value) ? Math.max(0, Math.min(1, value)) : 0;
  fill.style.width = `${(100 * v).toFixed(1)}%`;
  bar.appendChild(fill);
  row.appendChild(bar);
  return row;
}

function renderCard(r, stage2Name) {
  const li = el("li", r.rank === 1 ? "card top1" : "card");
  li.dataset.identity = r.identity;
  li.dataset.rank = String(r.rank);
  const thumb = el("div", "thumb");
  const img = el("img");
  img.src = r.thumbnail;
  img.alt = r.identity;
  img.loading = "lazy";
  thumb.appendChild(img);
  thumb.appendChild(el("span", "rank", `#${r.rank}`));
  li.appendChild(thumb);
  const body = el("div", "card-body");
  body.appendChild(el("div", "identity", r.identity.replace(/_/g, " ")));
  body.appendChild(el("div", "file", r.file));
  const dl = el("dl", "scores");
  if (typeof r.match_probability === "number") {  // P(same person) of this pair, Stage-1 score
    dl.appendChild(scoreRow("probability", "match probability", r.match_probability,
      "probability that this is the same person (from the pair's Stage-1 score, not the " +
      "re-ranker's blend; fitted on LFW at equal odds)",
      pct(r.match_probability)));
  }
  dl.appendChild(scoreRow("final", "final score", r.score));
  dl.appendChild(scoreRow("stage1", "Stage 1 cosine", r.stage1));
  if (r.stage_scores && r.stage_scores.calibrated !== undefined) {
    dl.appendChild(scoreRow("calibrated", "calibrated", r.stage_scores.calibrated));
  }
  if (stage2Name) {
    const alpha = r.stage_scores ? r.stage_scores.alpha : undefined;
    const note = r.stage2 === null ? "not re-ranked"
      : alpha === 0 ? "not blended: the gate kept the Stage-1 order" : "";
    dl.appendChild(scoreRow("stage2", `Stage 2 ${stage2Name.toUpperCase()}`, r.stage2, note));
  }
  if (typeof r.confidence === "number") {  // URL face confidence: bar full at 1.0 (typical)
    dl.appendChild(scoreRow("confidence", "URL confidence", r.confidence,
      "how trustworthy this gallery face is (1.0 = a typical clean LFW face)"));
  }
  body.appendChild(dl);
  li.appendChild(body);
  return li;
}

function render(data) {
  drawProbe(data.probe);
  $("method").textContent = data.stage2 === "none" ? "· Stage 1 only" : `· ${data.stage2}`;
  const list = $("results");
  list.replaceChildren(...data.results.map((r) => renderCard(r, data.stage2_name)));
  $("empty").hidden = data.results.length > 0;
  if (data.explanation) {
    $("explain-img").src = data.explanation;
    $("explain-note").textContent = data.explanation_note || "";
    $("explain").hidden = false;
    $("explain-vit").hidden = !data.explanation_vit;
    if (data.explanation_vit) $("explain-vit-img").src = data.explanation_vit;
  } else {
    $("explain").hidden = true;
    $("explain-img").removeAttribute("src");
  }
  const t = data.timings_ms;
  const top = data.results[0];
  const verdict = data["top1_verdict_far_1e-3"];  // strict: the best of many candidates
  $("status").textContent = top
    ? `top match ${top.identity.replace(/_/g, " ")}` +
      (verdict ? ` (${verdict} at FAR 1e-3)` : "") +
      ` · ${Math.round(t.extract + t.search)} ms`
    : "no matches";
  if (data.explanation_note && !data.explanation) {
    $("status").textContent += ` · ${data.explanation_note}`;
  }
  setState("done");
}

function setup() {
  const input = $("file");
  const drop = $("drop");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) search(input.files[0]);
    input.value = "";  // choosing the same file again searches again
  });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "dragend"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) search(file);
  });
  // a photo dropped outside the box should not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.files : [])][0];
    if (item) search(item);
  });
  $("k").addEventListener("change", () => { if (state.file && !state.busy) search(state.file); });
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
