// demo.js — the demo page served at GET /: one call with the avatar, plus live stats.
//
// Owns the page's wiring: the engine banner (from /readyz), the avatar panel (avatars.js),
// Start/Stop with the picked avatar, the received frame rate (requestVideoFrameCallback),
// the server's real-time factor (from /metrics) and the errors shown in words. The protocol
// lives in headcast.js.

import {
  HeadcastError,
  connect,
  createSession,
  openMicrophone,
  readMetrics,
  readiness,
} from "./headcast.js";
import { AvatarPanel } from "./avatars.js";

/** Engines that do not run the real model, and what their pictures are. */
const STAND_IN_ENGINES = {
  puppet: "a CPU stand-in that moves the avatar's mouth with the loudness of your voice",
  tiny: "the real code path with tiny random weights, so the pictures are noise",
};
const BASE_URL = ""; // this page's own server
const READY_POLL_MS = 2000;
const METRICS_POLL_MS = 2000;
const FPS_WINDOW_MS = 1000;
const RTF_GOOD = 1.0;

const $ = (id) => document.getElementById(id);
const video = $("avatar");
const stage = document.querySelector(".stage");
const startButton = $("start");
const stopButton = $("stop");

/** What the page knows about the call; tests and curious people can read window.headcastDemo. */
const state = {
  session: null,
  mic: null,
  startedAt: 0,
  framesRendered: 0,
  firstFrameMs: null,
  frameTimes: [],
  metricsTimer: null,
  lastMetrics: null,
};
window.headcastDemo = state;

const avatars = new AvatarPanel({
  baseUrl: BASE_URL,
  select: $("avatar-choice"),
  photo: $("avatar-photo"),
  status: $("avatar-status"),
  onPreview: (url) => (url ? video.setAttribute("poster", url) : video.removeAttribute("poster")),
});
window.headcastDemo.avatars = avatars;
avatars.refresh();

startButton.addEventListener("click", startCall);
stopButton.addEventListener("click", () => stopCall());
window.addEventListener("pagehide", () => stopCall());
showEngine();

async function showEngine() {
  const banner = $("engine-banner");
  let result;
  try {
    result = await readiness(BASE_URL);
  } catch (err) {
    setBanner("banner-error", err.message);
    return;
  }
  const engine = String(result.body.engine ?? "unknown");
  const description = String(result.body.description ?? "").trim().replace(/\.+$/, "");
  banner.dataset.engine = engine;
  const standIn = STAND_IN_ENGINES[engine];
  let title;
  let text;
  if (standIn) {
    title = `Stand-in engine: ${engine}.`;
    text = `${capitalise(standIn)}. This is NOT the FlashTalk model.`;
  } else if (engine === "flashtalk") {
    title = "Engine: flashtalk.";
    text = description || "The SoulX-FlashTalk model.";
  } else {
    title = `Engine: ${engine}.`;
    text = description;
  }
  if (!result.ready) text += " Warming up… Start works once it is ready.";
  setBanner(standIn ? "banner-standin" : "banner-info", text, title);
  banner.title = description; // the server's own words, on hover
  if (!result.ready) setTimeout(showEngine, READY_POLL_MS);
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function setBanner(kind, text, title = "") {
  const banner = $("engine-banner");
  banner.className = `banner ${kind}`;
  banner.replaceChildren();
  if (title) {
    const strong = document.createElement("strong");
    strong.textContent = title;
    banner.append(strong, " ");
  }
  banner.append(text);
}

async function startCall() {
  hideError();
  startButton.disabled = true;
  setConnection("opening microphone…");
  try {
    state.mic = await openMicrophone();
    setConnection("creating session…");
    state.session = await createSession(BASE_URL, { avatar: avatars.selected });
    setConnection("connecting…");
    resetCounters();
    const { videoStream } = await connect(state.session, state.mic, {
      onConnectionStateChange: onConnectionState,
    });
    video.srcObject = videoStream;
    stage.classList.add("live");
    stopButton.disabled = false;
    watchFrames();
    pollMetrics();
  } catch (err) {
    await stopCall();
    showError(err);
  }
}

async function stopCall() {
  clearInterval(state.metricsTimer);
  state.metricsTimer = null;
  const session = state.session;
  state.session = null;
  state.mic?.getTracks().forEach((track) => track.stop());
  state.mic = null;
  video.srcObject = null;
  stage.classList.remove("live");
  startButton.disabled = false;
  stopButton.disabled = true;
  $("stat-fps").textContent = "–";
  if (session) {
    setConnection("closed");
    await session.close();
  }
}

function onConnectionState(connectionState) {
  setConnection(connectionState);
  if (connectionState === "failed") {
    stopCall();
    showError(
      new HeadcastError(
        "The media connection failed (no network path between browser and server). " +
          "Check firewalls / TURN settings and press Start to retry.",
      ),
    );
  }
}

function setConnection(text) {
  const cell = $("stat-connection");
  cell.textContent = text;
  cell.className = text === "connected" ? "ok" : text === "failed" ? "bad" : "";
}

function resetCounters() {
  state.startedAt = performance.now();
  state.framesRendered = 0;
  state.firstFrameMs = null;
  state.frameTimes = [];
  state.lastMetrics = null;
  $("stat-frames").textContent = "0";
  $("stat-first-frame").textContent = "–";
}

/** Count every frame the browser presents, and derive the received frame rate. */
function watchFrames() {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) {
    $("stat-fps").textContent = "n/a (browser lacks requestVideoFrameCallback)";
    return;
  }
  const session = state.session;
  const onFrame = (now) => {
    if (state.session !== session || !session) return;
    state.framesRendered += 1;
    if (state.firstFrameMs === null) {
      state.firstFrameMs = now - state.startedAt;
      $("stat-first-frame").textContent = `${(state.firstFrameMs / 1000).toFixed(2)} s`;
    }
    state.frameTimes.push(now);
    while (state.frameTimes.length && now - state.frameTimes[0] > FPS_WINDOW_MS) {
      state.frameTimes.shift();
    }
    $("stat-fps").textContent = String(state.frameTimes.length);
    const quality = video.getVideoPlaybackQuality?.();
    $("stat-frames").textContent = String(quality?.totalVideoFrames ?? state.framesRendered);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

/** Sample /metrics every few seconds: RTF, chunk compute time and active sessions. */
function pollMetrics() {
  const sample = async () => {
    let metrics;
    try {
      metrics = await readMetrics(BASE_URL);
    } catch {
      $("stat-rtf").textContent = "unavailable";
      return;
    }
    const previous = state.lastMetrics;
    state.lastMetrics = metrics;
    const rtf = gaugeOrMean(metrics, previous, "headcast_rtf");
    const compute = gaugeOrMean(metrics, previous, "headcast_chunk_compute_seconds");
    const sessions = total(metrics, "headcast_sessions_active");
    const rtfCell = $("stat-rtf");
    rtfCell.textContent = rtf === null ? "–" : rtf.toFixed(2);
    rtfCell.className = rtf === null ? "" : rtf <= RTF_GOOD ? "ok" : "bad";
    $("stat-compute").textContent = compute === null ? "–" : `${(compute * 1000).toFixed(0)} ms`;
    $("stat-sessions").textContent = sessions === null ? "–" : String(sessions);
  };
  sample();
  state.metricsTimer = setInterval(sample, METRICS_POLL_MS);
}

/** Sum of every series named `name` (any labels), or null when there is none. */
function total(metrics, name) {
  let sum = null;
  for (const [series, value] of metrics) {
    if (series === name || series.startsWith(`${name}{`)) sum = (sum ?? 0) + value;
  }
  return sum;
}

/**
 * A gauge's value, or a histogram/summary's mean since the previous sample (the mean over
 * all time when nothing new arrived in between).
 */
function gaugeOrMean(metrics, previous, name) {
  const gauge = total(metrics, name);
  if (gauge !== null) return gauge;
  const sum = total(metrics, `${name}_sum`);
  const count = total(metrics, `${name}_count`);
  if (sum === null || !count) return null;
  if (previous) {
    const dSum = sum - (total(previous, `${name}_sum`) ?? 0);
    const dCount = count - (total(previous, `${name}_count`) ?? 0);
    if (dCount > 0) return dSum / dCount;
  }
  return sum / count;
}

function showError(err) {
  const box = $("error");
  box.textContent =
    err instanceof HeadcastError ? err.message : `Something went wrong: ${err?.message ?? err}`;
  box.hidden = false;
  if (err?.code) box.dataset.code = err.code;
  setConnection("idle");
}

function hideError() {
  const box = $("error");
  box.hidden = true;
  box.textContent = "";
  delete box.dataset.code;
}
