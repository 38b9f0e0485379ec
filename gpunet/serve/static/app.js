// gpunet-serve's page: send a photo to POST /api/emotions, draw a box per face and a bar chart
// of its seven emotion probabilities. Plain DOM, no library; every text is set with textContent.
"use strict";

const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
const $ = (id) => document.getElementById(id);
let maxUpload = 10e6;
let latest = 0; // the newest request: an older answer arriving late is dropped
let photoUrl = null;
let stream = null;

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(p) {
  return (100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1) + "%";
}

function formatBytes(n) {
  return n >= 1e6 ? (n / 1e6).toFixed(n % 1e6 ? 1 : 0) + " MB" : Math.round(n / 1e3) + " kB";
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  $("result").hidden = true; // the last photo's faces are not this file's
  $("status").textContent = "";
}

function status(text, className) {
  $("status").textContent = text;
  $("status").className = className || "";
}

async function health() {
  try {
    const r = await fetch("/api/health");
    const h = await r.json();
    maxUpload = h.max_upload;
    $("limit").textContent = formatBytes(maxUpload);
    $("about").textContent =
      `Model: ${h.model} · backend: ${h.backend}. ` + "Photos go to this gpunet server only and are not kept.";
  } catch (e) {
    showError(`The gpunet server does not answer (${e.message}); is gpunet-serve still running?`);
  }
}

async function analyse(blob, name) {
  const id = ++latest;
  $("error").hidden = true;
  if (blob.size > maxUpload) {
    showError(`${name}: ${formatBytes(blob.size)} is over this server's limit of ${formatBytes(maxUpload)}.`);
    return;
  }
  status(`Looking for faces in ${name}…`);
  const form = new FormData();
  form.append("photo", blob, name);
  let answer;
  try {
    const r = await fetch("/api/emotions", { method: "POST", body: form });
    const text = await r.text();
    try {
      answer = JSON.parse(text);
    } catch (e) {
      answer = { error: `the server answered ${r.status} ${r.statusText}: ${text.slice(0, 200)}` };
    }
    if (!r.ok && !answer.error) answer = { error: `the server answered ${r.status} ${r.statusText}` };
  } catch (e) {
    answer = { error: `the photo could not be sent (${e.message}); is gpunet-serve still running?` };
  }
  if (id !== latest) return;
  if (answer.error) {
    showError(answer.error);
    return;
  }
  await show(blob, answer);
}

function show(blob, answer) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(blob);
  const img = $("photo");
  return new Promise((resolve) => {
    img.onload = () => {
      draw(img, answer);
      resolve();
    };
    img.onerror = () => {
      showError("The browser cannot display this photo, though the server read it.");
      resolve();
    };
    img.src = photoUrl;
  });
}

function draw(img, answer) {
  const [W, H] = answer.size;
  const frame = $("frame");
  frame.querySelectorAll(".box").forEach((b) => b.remove());
  const list = $("faces");
  list.replaceChildren();
  answer.faces.forEach((face, i) => {
    const [x, y, w, h] = face.box;
    const ranked = EMOTIONS.filter((n) => n in face.emotions).sort((a, b) => face.emotions[b] - face.emotions[a]);
    const top = ranked[0];
    const box = el("div", "box" + (y < 0.08 * H ? " low" : ""));
    box.style.left = (100 * x) / W + "%";
    box.style.top = (100 * y) / H + "%";
    box.style.width = (100 * w) / W + "%";
    box.style.height = (100 * h) / H + "%";
    box.append(el("span", "box-label", `${i + 1} ${top} ${pct(face.emotions[top])}`));
    frame.append(box);
    list.append(card(img, face, i, top, W));
  });
  $("result").hidden = false;
  const n = answer.faces.length;
  if (n === 0) status("No face found in this photo.", "none");
  else status(`${n} face${n > 1 ? "s" : ""} found (${Math.round(answer.ms)} ms, model ${answer.model}).`);
}

function card(img, face, i, top, W) {
  const li = el("li", "face");
  const title = el("h2");
  const thumb = el("canvas");
  thumb.width = thumb.height = 96;
  const [x, y, w, h] = face.box;
  const k = img.naturalWidth / W; // the browser's pixels per pixel of the analysed photo
  thumb.getContext("2d").drawImage(img, x * k, y * k, w * k, h * k, 0, 0, 96, 96);
  title.append(thumb, el("span", "", `Face ${i + 1}: ${top}`));
  li.append(title);
  for (const name of EMOTIONS) {
    const p = face.emotions[name] ?? 0;
    const row = el("div", "bar" + (name === top ? " top" : ""));
    row.setAttribute("role", "meter");
    row.setAttribute("aria-label", name);
    row.setAttribute("aria-valuemin", "0");
    row.setAttribute("aria-valuemax", "1");
    row.setAttribute("aria-valuenow", String(p));
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = 100 * p + "%";
    track.append(fill);
    row.append(el("span", "name", name), track, el("span", "value", pct(p)));
    li.append(row);
  }
  return li;
}

function pick(files) {
  const file = files && files[0];
  if (!file) return;
  // Any file is sent: the server reads its bytes and says what is wrong with them (a text file,
  // a GIF, a truncated JPEG), in one line.
  analyse(file, file.name || "photo");
}

// ----------------------------------------------------------------------- webcam
function setupWebcam() {
  const can = window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia;
  if (!can) {
    $("webcam-note").textContent =
      "Webcam: not available here (browsers allow it on https:// pages and on localhost).";
    $("webcam-note").hidden = false;
    return;
  }
  $("webcam-start").hidden = false;
  $("webcam-start").addEventListener("click", async () => {
    $("error").hidden = true;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (e) {
      showError(`The webcam cannot be used: ${e.name === "NotAllowedError" ? "permission was refused" : e.message}.`);
      return;
    }
    $("snap").disabled = true; // until the first frame arrives
    $("video").srcObject = stream;
    $("webcam").hidden = false;
    $("webcam-start").hidden = true;
  });
  $("video").addEventListener("loadeddata", () => ($("snap").disabled = false));
  $("webcam-stop").addEventListener("click", stopWebcam);
  $("snap").addEventListener("click", () => {
    const video = $("video");
    if (!video.videoWidth) {
      showError("The webcam has not shown a picture yet; try again in a moment.");
      return;
    }
    const canvas = el("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => blob && analyse(blob, "webcam.jpg"), "image/jpeg", 0.92);
  });
}

function stopWebcam() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("webcam").hidden = true;
  $("webcam-start").hidden = false;
}

// ----------------------------------------------------------------------- wiring
function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    pick(e.target.files);
    e.target.value = ""; // the same file chosen again is analysed again
  });
  ["dragenter", "dragover"].forEach((t) =>
    drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    })
  );
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    pick(e.dataTransfer.files);
  });
  // a photo dropped beside the zone must not replace the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    pick(e.dataTransfer.files);
  });
  window.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) pick(files);
  });
  setupWebcam();
  health();
}

setup();
