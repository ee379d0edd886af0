// ferlab web page: send a photo or a webcam frame to /v1/predict, draw the faces and their
// expression probabilities. Plain JavaScript, no external resources.
"use strict";

const MAX_CANVAS_SIDE = 1600;          // photos are drawn at most this large (boxes are scaled)
const AUTO_INTERVAL_MS = 500;          // webcam: one frame per interval while "every 0.5 s" is on
const COLORS = ["#22c55e", "#f59e0b", "#3b82f6", "#ec4899", "#14b8a6", "#a855f7", "#ef4444", "#84cc16"];

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");
const video = $("video"), stage = $("drop-zone"), results = $("results"), statusLine = $("status");
const fileInput = $("file-input"), camToggle = $("webcam-toggle"), camCapture = $("webcam-capture"), camAuto = $("webcam-auto");

let classes = null;                    // from /healthz
let stream = null;                     // webcam MediaStream
let busy = false;                      // a webcam request is in flight
let requestId = 0;                     // answers to older requests are dropped
let autoTimer = null;

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const r = await fetch("/healthz");
    const info = await r.json();
    if (!r.ok) throw new Error(info.detail || r.statusText);
    classes = info.classes;
    $("model-info").textContent = `model ${info.model}${info.weights ? " (" + info.weights + ")" : ""} · ` +
      `${info.backend} · ${info.detector} face detector`;
  } catch (e) {
    $("model-info").textContent = "service not reachable";
  }
}

async function predict(blob, name) {
  const form = new FormData();
  form.append("image", blob, name || "photo");
  const r = await fetch("/v1/predict", { method: "POST", body: form });
  let body;
  try { body = await r.json(); } catch { body = {}; }
  if (!r.ok) throw new Error(body.detail || `${r.status} ${r.statusText}`);
  return body;
}

// ---- drawing ----------------------------------------------------------------------------------

function drawSource(source, width, height) {
  const s = Math.min(1, MAX_CANVAS_SIDE / Math.max(width, height));
  canvas.width = Math.round(width * s);
  canvas.height = Math.round(height * s);
  ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
  stage.classList.remove("empty");
}

function drawFaces(result) {
  const sx = canvas.width / result.width, sy = canvas.height / result.height;
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
  const fontPx = Math.max(13, Math.round(Math.max(canvas.width, canvas.height) / 45));
  ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  result.faces.forEach((face, i) => {
    const [x, y, w, h] = [face.box[0] * sx, face.box[1] * sy, face.box[2] * sx, face.box[3] * sy];
    const color = COLORS[i % COLORS.length];
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, w, h);
    const text = `${i + 1}: ${face.label} ${Math.round(face.confidence * 100)}%`;
    const tw = ctx.measureText(text).width + 10, th = fontPx + 8;
    const ty = y - th >= 0 ? y - th : Math.min(canvas.height - th, y + h);
    ctx.fillStyle = color;
    ctx.fillRect(x - line / 2, ty, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + 5 - line / 2, ty + 4);
  });
  canvas.dataset.faces = String(result.faces.length);
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showResults(result) {
  results.replaceChildren();
  if (result.faces.length === 0) {
    results.append(el("p", "none", "No face found."));
    return;
  }
  result.faces.forEach((face, i) => {
    const card = el("article", "face");
    card.dataset.label = face.label;
    const title = el("h2");
    const left = el("span");
    const swatch = el("span", "swatch");
    swatch.style.background = COLORS[i % COLORS.length];
    left.append(swatch, `Face ${i + 1}: ${face.label}`);
    title.append(left, el("small", "", `${Math.round(face.confidence * 100)}%`));
    const bars = el("div", "bars");
    for (const name of classes || Object.keys(face.probs)) {
      const p = face.probs[name] ?? 0;
      const cls = name === face.label ? "row top" : "row";
      const label = el("span", cls, name);
      const track = el("span", "track " + cls);
      const bar = el("span", "bar");
      bar.style.width = `${(p * 100).toFixed(1)}%`;
      bar.dataset.class = name;
      bar.dataset.p = p.toFixed(4);
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-label", name);
      bar.setAttribute("aria-valuenow", (p * 100).toFixed(1));
      track.append(bar);
      bars.append(label, track, el("span", "pct", `${(p * 100).toFixed(1)}%`));
    }
    card.append(title, bars);
    results.append(card);
  });
}

function summary(result, seconds) {
  const n = result.faces.length;
  const faces = n === 0 ? "no face" : n === 1 ? "1 face" : `${n} faces`;
  return `${faces} in ${result.width}×${result.height} px (${seconds.toFixed(2)} s)`;
}

// ---- photos -----------------------------------------------------------------------------------

async function decodePhoto(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    // Formats the browser cannot decode (TIFF, ...) still go to the server.
    return null;
  }
}

async function handleFile(file) {
  if (!file) return;
  camAuto.checked = false;   // a photo replaces the live view
  stopAuto();
  const id = ++requestId;
  setStatus(`Recognising ${file.name}…`);
  const t0 = performance.now();
  try {
    const [bitmap, result] = await Promise.all([decodePhoto(file), predict(file, file.name)]);
    if (id !== requestId) return;
    if (bitmap) drawSource(bitmap, bitmap.width, bitmap.height);
    else { canvas.width = result.width; canvas.height = result.height; ctx.fillStyle = "#ddd"; ctx.fillRect(0, 0, canvas.width, canvas.height); stage.classList.remove("empty"); }
    drawFaces(result);
    showResults(result);
    setStatus(`${file.name}: ${summary(result, (performance.now() - t0) / 1000)}`);
  } catch (e) {
    if (id === requestId) setStatus(`${file.name}: ${e.message}`, true);
  }
}

fileInput.addEventListener("change", () => { handleFile(fileInput.files[0]); fileInput.value = ""; });

["dragenter", "dragover"].forEach((type) => stage.addEventListener(type, (e) => {
  e.preventDefault();
  stage.classList.add("dragover");
}));
["dragleave", "drop"].forEach((type) => stage.addEventListener(type, () => stage.classList.remove("dragover")));
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/")) || e.dataTransfer?.files[0];
  handleFile(file);
});
// Dropping a photo next to the stage must not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

// ---- webcam -----------------------------------------------------------------------------------

async function startWebcam() {
  if (!navigator.mediaDevices?.getUserMedia) {
    setStatus("This browser gives no webcam access here (it needs https or localhost).", true);
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false });
  } catch (e) {
    setStatus(`Webcam not available: ${e.message || e.name}`, true);
    return;
  }
  video.srcObject = stream;
  await video.play();
  camToggle.textContent = "Stop webcam";
  camCapture.disabled = camAuto.disabled = false;
  setStatus("Webcam on: Capture recognises one frame; tick “every 0.5 s” for a live view.");
  captureFrame();
}

function stopWebcam() {
  stopAuto();
  camAuto.checked = false;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  video.srcObject = null;
  camToggle.textContent = "Start webcam";
  camCapture.disabled = camAuto.disabled = true;
  setStatus("Webcam off.");
}

async function captureFrame() {
  if (!stream || busy || !video.videoWidth) return;
  busy = true;
  const id = ++requestId;
  const t0 = performance.now();
  try {
    const frame = document.createElement("canvas");
    frame.width = video.videoWidth;
    frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((resolve) => frame.toBlob(resolve, "image/jpeg", 0.9));
    const result = await predict(blob, "webcam.jpg");
    if (id !== requestId || !stream) return;
    drawSource(frame, frame.width, frame.height);
    drawFaces(result);
    showResults(result);
    setStatus(`webcam: ${summary(result, (performance.now() - t0) / 1000)}`);
  } catch (e) {
    if (id === requestId) setStatus(`webcam: ${e.message}`, true);
  } finally {
    busy = false;
  }
}

function scheduleAuto() {
  stopAuto();
  if (!camAuto.checked || !stream) return;
  const tick = async () => {
    const t0 = performance.now();
    await captureFrame();
    if (camAuto.checked && stream) autoTimer = setTimeout(tick, Math.max(0, AUTO_INTERVAL_MS - (performance.now() - t0)));
  };
  tick();
}

function stopAuto() {
  clearTimeout(autoTimer);
  autoTimer = null;
}

camToggle.addEventListener("click", () => (stream ? stopWebcam() : startWebcam()));
camCapture.addEventListener("click", captureFrame);
camAuto.addEventListener("change", scheduleAuto);

loadInfo();
