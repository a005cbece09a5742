// headcast.js — the browser SDK for a headcast server (ES module, no dependencies).
//
// Owns the HTTP + WebRTC handshake with a headcast server: create a session, send the
// microphone (or any audio MediaStream) and receive the avatar's video plus the audio that
// drove it. Knows nothing about the page that uses it.
//
//   import { createSession, connect, close, openMicrophone } from "/static/headcast.js";
//   const session = await createSession("https://avatar.example.com", { avatar: "default" });
//   const mic = await openMicrophone();
//   const { pc, videoStream } = await connect(session, mic);
//   videoElement.srcObject = videoStream;   // video + the returned audio
//   ...
//   await close(session);                   // or session.close()
//
// A server with API keys wants `createSession(url, { apiKey })`. Keep keys out of pages
// anyone can load: let your backend create the session and hand the browser its JSON, then
// `new Session(url, body)` and `connect` as above.

/** How long to wait for ICE gathering before sending the offer anyway, in milliseconds. */
export const ICE_GATHERING_TIMEOUT_MS = 5000;

/** Default time limit of one HTTP request to the server, in milliseconds. */
export const REQUEST_TIMEOUT_MS = 15000;

/** How often a connected session tells the server it is still there, in milliseconds. */
export const KEEPALIVE_INTERVAL_MS = 30000;

/** An error with a sentence meant for the person using the page. */
export class HeadcastError extends Error {
  /**
   * @param {string} message what happened and what to do, in words
   * @param {{status?: number, code?: string, retryAfterS?: number, cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message);
    this.name = "HeadcastError";
    /** HTTP status, when the server answered. */
    this.status = details.status;
    /** A short machine-readable reason: "capacity", "warming-up", "mic-denied", ... */
    this.code = details.code;
    /** Seconds the server asked us to wait before retrying (429 / 503). */
    this.retryAfterS = details.retryAfterS;
    this.cause = details.cause;
  }
}

/** One server-side session: what POST /v1/sessions returned, plus the peer connection. */
export class Session {
  /**
   * @param {string} baseUrl
   * @param {{id: string, token: string, expires_at?: string, ice_servers?: RTCIceServer[]}} body
   */
  constructor(baseUrl, body) {
    this.baseUrl = baseUrl;
    this.id = body.id;
    this.token = body.token;
    this.expiresAt = body.expires_at ? new Date(body.expires_at) : null;
    this.iceServers = body.ice_servers ?? [];
    /** @type {RTCPeerConnection | null} */
    this.pc = null;
    this.closed = false;
    this.keepAliveTimer = null;
  }

  /** The Authorization header this session's requests carry. */
  get authHeaders() {
    return { Authorization: `Bearer ${this.token}` };
  }

  /**
   * Stop the avatar mid-utterance: queued audio and unplayed frames are dropped.
   * @returns {Promise<{type: "interrupted", played_ms: number}>}
   */
  async interrupt() {
    return request(this.baseUrl, `/v1/sessions/${encodeURIComponent(this.id)}/interrupt`, {
      method: "POST",
      headers: this.authHeaders,
    });
  }

  /** Tell the server the client is still there while it sends no media. */
  async keepAlive() {
    await request(this.baseUrl, `/v1/sessions/${encodeURIComponent(this.id)}/keepalive`, {
      method: "POST",
      headers: this.authHeaders,
    });
  }

  /** Hang up: close the peer connection and delete the session on the server. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepAliveTimer);
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
    try {
      await request(this.baseUrl, `/v1/sessions/${encodeURIComponent(this.id)}`, {
        method: "DELETE",
        headers: this.authHeaders,
      });
    } catch (err) {
      // The session expires on the server by itself; a failed DELETE is not the user's problem.
      if (!(err instanceof HeadcastError && err.status === 404)) {
        console.warn("headcast: could not delete session", this.id, err);
      }
    }
  }
}

/**
 * Ask the server for a session.
 * @param {string} baseUrl e.g. "" (this page's server) or "https://avatar.example.com"
 * @param {{avatar?: string, apiKey?: string}} [options] `apiKey` for servers that require one
 * @returns {Promise<Session>}
 */
export async function createSession(baseUrl, { avatar = "default", apiKey } = {}) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const body = await request(baseUrl, "/v1/sessions", {
    method: "POST",
    headers,
    body: JSON.stringify({ avatar }),
  });
  return new Session(trimSlash(baseUrl), body);
}

/**
 * Start the WebRTC call: send `micStream`'s audio, receive the avatar video and its audio.
 *
 * Adds a sendrecv audio transceiver (the microphone out, the avatar's voice back) and a
 * recvonly video transceiver, gathers ICE fully (the server does not trickle), sends the
 * offer and applies the answer.
 *
 * @param {Session} session from createSession
 * @param {MediaStream} micStream audio to animate the avatar with (microphone or TTS)
 * @param {{onConnectionStateChange?: (state: RTCPeerConnectionState) => void}} [options]
 * @returns {Promise<{pc: RTCPeerConnection, videoStream: MediaStream}>} `videoStream` holds
 *   the remote video track and the remote audio track, ready for a <video> element.
 */
export async function connect(session, micStream, { onConnectionStateChange } = {}) {
  if (session.closed) throw new HeadcastError("This session is closed; start a new call.");
  const micTrack = micStream.getAudioTracks()[0];
  if (!micTrack) {
    throw new HeadcastError("The audio stream has no audio track: check the microphone.", {
      code: "no-audio-track",
    });
  }
  const pc = new RTCPeerConnection({ iceServers: session.iceServers });
  session.pc = pc;
  const videoStream = new MediaStream();
  pc.ontrack = (event) => videoStream.addTrack(event.track);
  if (onConnectionStateChange) {
    pc.onconnectionstatechange = () => onConnectionStateChange(pc.connectionState);
  }

  pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [micStream] });
  pc.addTransceiver("video", { direction: "recvonly" });

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, ICE_GATHERING_TIMEOUT_MS);
    const answer = await request(
      session.baseUrl,
      `/v1/sessions/${encodeURIComponent(session.id)}/offer`,
      {
        method: "POST",
        headers: { "Content-Type": "application/json", ...session.authHeaders },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      },
    );
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  } catch (err) {
    await session.close();
    throw err;
  }
  // The server releases sessions without client activity; a quiet caller is still a caller.
  session.keepAliveTimer = setInterval(() => {
    session.keepAlive().catch((err) => console.warn("headcast: keep-alive failed", err));
  }, KEEPALIVE_INTERVAL_MS);
  return { pc, videoStream };
}

/** Hang up `session` (same as `session.close()`). */
export async function close(session) {
  await session.close();
}

/**
 * Open the microphone, turning the browser's errors into sentences a person can act on.
 * @returns {Promise<MediaStream>}
 */
export async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new HeadcastError(
      "This browser cannot use the microphone here: open the page over https or on localhost.",
      { code: "mic-unavailable" },
    );
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 },
      video: false,
    });
  } catch (err) {
    const name = err?.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      throw new HeadcastError(
        "Microphone access was denied. Allow the microphone for this site (the icon in the " +
          "address bar) and press Start again.",
        { code: "mic-denied", cause: err },
      );
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      throw new HeadcastError("No microphone was found. Plug one in and press Start again.", {
        code: "mic-missing",
        cause: err,
      });
    }
    if (name === "NotReadableError") {
      throw new HeadcastError(
        "The microphone is busy in another program. Close it there and press Start again.",
        { code: "mic-busy", cause: err },
      );
    }
    throw new HeadcastError(`Could not open the microphone: ${err?.message ?? err}`, {
      code: "mic-error",
      cause: err,
    });
  }
}

/**
 * GET /readyz: whether the engine is warm, and which engine it is.
 * @param {string} baseUrl
 * @returns {Promise<{ready: boolean, status: number, body: Record<string, unknown>}>}
 */
export async function readiness(baseUrl) {
  const response = await fetchWithTimeout(`${trimSlash(baseUrl)}/readyz`, {});
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = {};
  }
  return { ready: response.ok, status: response.status, body };
}

/**
 * Read one sample of the server's Prometheus metrics (GET /metrics).
 * @param {string} baseUrl
 * @returns {Promise<Map<string, number>>} series (name plus labels, as written) -> value
 */
export async function readMetrics(baseUrl) {
  const response = await fetchWithTimeout(`${trimSlash(baseUrl)}/metrics`, {});
  if (!response.ok) throw new HeadcastError(`GET /metrics answered ${response.status}.`);
  return parsePrometheus(await response.text());
}

/**
 * Parse Prometheus text exposition into series -> value (comments and NaN skipped).
 * @param {string} text
 * @returns {Map<string, number>}
 */
export function parsePrometheus(text) {
  const series = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const cut = line.lastIndexOf(" ");
    if (cut <= 0) continue;
    const value = Number(line.slice(cut + 1));
    if (!Number.isNaN(value)) series.set(line.slice(0, cut), value);
  }
  return series;
}

/** Resolve when `pc` has gathered every ICE candidate, or after `timeoutMs`. */
function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** fetch() with a time limit, turning network failures into a HeadcastError. */
async function fetchWithTimeout(url, init, timeoutMs = REQUEST_TIMEOUT_MS) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    return await fetch(url, { ...init, signal: controller.signal });
  } catch (err) {
    const what = err?.name === "AbortError" ? `did not answer in ${timeoutMs / 1000} s` : "is unreachable";
    throw new HeadcastError(
      `The headcast server at ${new URL(url, location.href).origin} ${what}. ` +
        "Check that it is running and try again.",
      { code: "network", cause: err },
    );
  } finally {
    clearTimeout(timer);
  }
}

/** Send a request; return the JSON body, or throw a HeadcastError that says what to do. */
async function request(baseUrl, path, init) {
  const response = await fetchWithTimeout(`${trimSlash(baseUrl)}${path}`, init);
  if (response.status === 204) return null;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok) return body;
  throw problemError(response, body);
}

/** Turn an HTTP error answer (problem details JSON) into a sentence. */
function problemError(response, problem) {
  const status = response.status;
  const retryHeader = Number(response.headers.get("Retry-After"));
  const retryAfterS = Number.isFinite(retryHeader) && retryHeader > 0 ? retryHeader : undefined;
  const detail = problem?.detail ?? problem?.title ?? response.statusText;
  if (status === 429) {
    const wait = retryAfterS ? `retry in ${retryAfterS} s` : "retry in a moment";
    return new HeadcastError(`The server is at capacity: every avatar slot is in use; ${wait}.`, {
      status,
      code: "capacity",
      retryAfterS,
    });
  }
  if (status === 503) {
    const wait = retryAfterS ? `retry in ${retryAfterS} s` : "retry in a few seconds";
    return new HeadcastError(`The avatar engine is still warming up; ${wait}.`, {
      status,
      code: "warming-up",
      retryAfterS,
    });
  }
  if (status === 401 || status === 403) {
    return new HeadcastError(`The server refused the request: ${detail}`, {
      status,
      code: "unauthorized",
    });
  }
  if (status === 404) {
    return new HeadcastError(`Not found: ${detail}. The session may have expired; start a new call.`, {
      status,
      code: "not-found",
    });
  }
  return new HeadcastError(`The server answered ${status}: ${detail}`, { status, code: "http" });
}

function trimSlash(baseUrl) {
  return (baseUrl ?? "").replace(/\/+$/, "");
}
