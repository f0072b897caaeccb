// The stillframe page: every call here is one a frontend makes, written to be copied.
// Images are fetched (not set as <img src>) so that an API key can go in the Authorization header;
// with URL signing on, the storyboard's sheet URL works as it stands too.

const $ = (id) => document.getElementById(id);
const state = { url: "", info: null, cues: [], sheet: null, actual: null, rational: null, busy: 0 };

function headers(extra = {}) {
  const key = $("key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers) });
  if (!response.ok) {
    let detail = `${response.status}`;
    try {
      const problem = await response.json();
      detail = `${problem.code}: ${problem.detail || problem.title}`;
    } catch (_) { /* not a problem document */ }
    throw new Error(detail);
  }
  return response;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

const query = (params) => new URLSearchParams(params).toString();

// ---------------------------------------------------------------- WebVTT storyboard

function vttSeconds(text) {
  const [h, m, s] = text.split(":");
  return Number(h) * 3600 + Number(m) * 60 + Number(s);
}

function parseStoryboard(vtt) {
  const cues = [];
  const lines = vtt.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const timing = lines[i].match(/^(\S+)\s+-->\s+(\S+)/);
    if (!timing) continue;
    const [url, fragment] = lines[i + 1].split("#xywh=");
    const [x, y, w, h] = fragment.split(",").map(Number);
    cues.push({ start: vttSeconds(timing[1]), end: vttSeconds(timing[2]), url, x, y, w, h });
  }
  return cues;
}

function cueAt(t) {
  const cues = state.cues;
  return cues.find((cue) => cue.start <= t && t < cue.end) || cues[cues.length - 1];
}

// ---------------------------------------------------------------- timeline

function timeAtPointer(event) {
  const box = $("timeline").getBoundingClientRect();
  const fraction = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
  return fraction * state.info.duration;
}

function showPreview(event) {
  if (!state.cues.length || !state.sheet) return;
  const t = timeAtPointer(event);
  const cue = cueAt(t);
  const preview = $("preview");
  const box = $("timeline").getBoundingClientRect();
  preview.hidden = false;
  preview.style.width = `${cue.w}px`;
  preview.style.height = `${cue.h}px`;
  preview.style.backgroundImage = `url(${state.sheet})`;
  preview.style.backgroundPosition = `-${cue.x}px -${cue.y}px`;
  const left = Math.min(box.width - cue.w, Math.max(0, event.clientX - box.left - cue.w / 2));
  preview.style.left = `${left}px`;
  preview.dataset.time = t.toFixed(6);
  preview.dataset.xywh = `${cue.x},${cue.y},${cue.w},${cue.h}`;
  $("preview-time").textContent = `${t.toFixed(2)} s`;
}

function placeMarker(seconds) {
  if (!state.info || !state.info.duration) return;
  $("marker").style.left = `${(100 * seconds) / state.info.duration}%`;
}

// ---------------------------------------------------------------- frames

async function showFrame(t) {
  const tolerance = $("keyframes").checked ? "inf" : "0";
  state.busy++;
  try {
    const response = await api(`/v1/frame?${query({ url: state.url, t, tolerance })}`);
    const image = URL.createObjectURL(await response.blob());
    const old = $("frame").src;
    $("frame").src = image;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    state.actual = response.headers.get("X-Actual-Time");
    state.rational = response.headers.get("X-Actual-Time-Rational");
    $("actual").textContent = state.actual;
    $("rational").textContent = state.rational;
    $("requested").textContent = response.headers.get("X-Requested-Time");
    const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    $("download").href = image;
    $("download").download = name ? name[1] : `frame-${state.actual}.jpg`;
    placeMarker(Number(state.actual));
    say("");
  } catch (error) {
    say(error.message, true);
  } finally {
    state.busy--;
  }
}

// Frame steps in exact arithmetic on the frame's own timescale ("value/timescale"): one tick before
// the frame on screen shows the previous frame; the next is at most a frame duration on.
async function step(direction) {
  if (!state.rational) return;
  const [value, scale] = state.rational.split("/").map(BigInt);
  if (direction < 0) {
    if (value > 0n) await showFrame(`${value - 1n}/${scale}`);
    return;
  }
  const [rateNum, rateDen] = (state.info.frame_rate_rational || "25/1").split("/").map(BigInt);
  const before = state.actual;
  for (let frames = 1n; frames <= 8n && state.actual === before; frames++) {
    // value/scale + frames * rateDen/rateNum, as one rational
    await showFrame(`${value * rateNum + frames * rateDen * scale}/${scale * rateNum}`);
  }
}

// ---------------------------------------------------------------- a batch of times as a job

function readEvents(path, onEvent, plain) {
  if (plain) {
    const source = new EventSource(path); // no API key needed, or a signed URL
    for (const type of ["frame.succeeded", "frame.failed", "frame.cancelled", "job.completed"]) {
      source.addEventListener(type, (event) => {
        onEvent(type, JSON.parse(event.data));
        if (type === "job.completed") source.close();
      });
    }
    return;
  }
  // EventSource cannot send Authorization: read the same stream with fetch.
  api(path).then(async (response) => {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const type = (block.match(/^event: (.*)$/m) || [])[1];
        const data = (block.match(/^data: (.*)$/m) || [])[1];
        if (type && data) onEvent(type, JSON.parse(data));
      }
    }
  }).catch((error) => say(error.message, true));
}

async function runJob() {
  const times = $("times").value.split(/[\s,]+/).filter(Boolean);
  const tolerance = $("keyframes").checked ? "inf" : "0";
  $("job-results").replaceChildren();
  try {
    const response = await api("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ url: state.url, times, tolerance }),
    });
    const job = await response.json();
    let done = 0;
    $("job-progress").max = times.length;
    $("job-progress").value = 0;
    $("job-status").textContent = job.status;
    // With an API key, a signed events URL (GET /v1/jobs/{id}/links, where URL signing is on) lets a
    // plain EventSource in; without one, the stream is read with fetch, which can send the key.
    let events = job.links.events;
    let plain = !$("key").value.trim();
    if (!plain) {
      try {
        events = (await (await api(`/v1/jobs/${job.id}/links`)).json()).events;
        plain = true;
      } catch (_) { /* no URL signing: fetch it is */ }
    }
    readEvents(events, async (type, data) => {
      if (type === "job.completed") {
        $("job-status").textContent = `${data.status || "completed"}`;
        return;
      }
      $("job-progress").value = ++done;
      $("job-status").textContent = `${done} / ${times.length}`;
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.textContent = type === "frame.succeeded" ? `${data.requested} → ${data.actual_time} s` : `${data.requested}: ${type}`;
      figure.append(caption);
      figure.style.order = data.index;
      $("job-results").append(figure);
      if (type === "frame.succeeded") {
        const image = await api(data.image_url);
        const img = document.createElement("img");
        img.src = URL.createObjectURL(await image.blob());
        img.alt = `frame at ${data.actual_time} s`;
        figure.prepend(img);
      }
    }, plain);
  } catch (error) {
    say(error.message, true);
  }
}

// ---------------------------------------------------------------- opening a video

async function openVideo(url, t) {
  state.url = url;
  state.cues = [];
  state.sheet = null;
  const link = new URL(location.href);
  link.searchParams.set("url", url);
  history.replaceState(null, "", link);
  say("opening…");
  try {
    state.info = await (await api(`/v1/info?${query({ url })}`)).json();
  } catch (error) {
    say(error.message, true);
    return;
  }
  const info = state.info;
  const rate = info.frame_rate ? `${info.frame_rate.toFixed(3)} fps${info.variable_frame_rate ? " (variable)" : ""}` : "";
  $("info").textContent = `${info.duration} s · ${info.width}×${info.height} · ${rate} · ${info.video_codec}` +
    (info.rotation ? ` · rotated ${info.rotation}°` : "") + (info.hdr ? ` · HDR ${info.hdr}` : "");
  $("player").hidden = false;
  $("batch").hidden = false;
  await showFrame(t || "0");
  try {
    const vtt = await (await api(`/v1/storyboard.vtt?${query({ url })}`)).text();
    state.cues = parseStoryboard(vtt);
    const sheet = await api(new URL(state.cues[0].url, location.href));
    state.sheet = URL.createObjectURL(await sheet.blob());
    $("timeline").dataset.ready = "true";
  } catch (error) {
    say(`storyboard: ${error.message}`, true);
  }
}

// Listed when the picker is first used (a request at load would be refused where keys are on and
// none is typed yet), and again after a key is entered.
let listed = false;
async function listFiles() {
  if (listed) return;
  try {
    const { files } = await (await api("/v1/media")).json();
    for (const file of files) $("files").append(new Option(file, file));
    listed = true;
  } catch (_) { /* no media root, or a key is needed first: the URL field still works */ }
}

$("source").addEventListener("submit", (event) => {
  event.preventDefault();
  openVideo($("url").value.trim());
});
$("files").addEventListener("change", () => {
  if ($("files").value) {
    $("url").value = $("files").value;
    openVideo($("url").value);
  }
});
$("key").addEventListener("change", () => listFiles());
$("files").addEventListener("focus", () => listFiles());
$("timeline").addEventListener("mousemove", showPreview);
$("timeline").addEventListener("mouseleave", () => { $("preview").hidden = true; });
$("timeline").addEventListener("click", (event) => showFrame(timeAtPointer(event).toFixed(6)));
$("timeline").addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
    event.preventDefault();
    step(event.key === "ArrowLeft" ? -1 : 1);
  }
});
$("prev").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));
$("poster").addEventListener("click", () => showFrame("auto"));
$("keyframes").addEventListener("change", () => state.actual !== null && showFrame(state.actual));
$("run-job").addEventListener("click", runJob);

const start = new URLSearchParams(location.search);
if (start.get("url")) {
  $("url").value = start.get("url");
  openVideo(start.get("url"), start.get("t"));
}
