// headcast.js — the browser SDK for a headcast server (ES module, no dependencies).
//
// Owns the HTTP + WebRTC + WebSocket protocol with a headcast server: add avatars from
// photos (createAvatar / waitAvatar / listAvatars / deleteAvatar), create a session, connect, receive the avatar's video plus the audio that drove it, and drive the avatar
// either with a microphone (mic sessions) or with your chatbot's TTS audio (push sessions:
// speak / speakStream / audioEnd / interrupt, with backpressure from the server's queue).
// Knows nothing about the page that uses it.
//
//   import { createSession, connect } from "@headcast/web";     // or "/static/headcast.js"
//   // Chatbot mode: your TTS talks through the avatar.
//   const session = await createSession("https://avatar.example.com",
//                                       { audioSource: "push", sampleRate: 24000 });
//   session.on("speech.ended", ({ duration_ms }) => console.log("spoke", duration_ms, "ms"));
//   const { videoStream } = await connect(session);          // receive only
//   videoElement.srcObject = videoStream;                    // video + the returned audio
//   await session.speak(pcm16Chunk);                          // Int16Array or Float32Array
//   await session.audioEnd();                                 // the utterance is complete
//   await session.interrupt();                                // the user barged in
//   await session.close();
//
//   // Persona mode: a person talks through the avatar.
//   const mic = await openMicrophone();
//   const { videoStream } = await connect(await createSession(url), mic);
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

/** Audio per binary frame sent to the server in push sessions, in milliseconds. */
export const PUSH_FRAME_MS = 100;

/** Default of how far ahead of playback `speak` may queue audio on the server, in ms. */
export const DEFAULT_AHEAD_MS = 2000;

/** The least `aheadMs` used: more than one chunk (1.12 s), which the server plays whole. */
export const MIN_AHEAD_MS = 1500;

/** How long `interrupt()` waits for the server's `interrupted` event, in milliseconds. */
export const INTERRUPT_TIMEOUT_MS = 5000;

/** Sample rates a push session takes, in Hz. */
export const PUSH_SAMPLE_RATES = [16000, 24000, 48000];

/** Events a session dispatches (`on(type, …)` / `addEventListener(type, …)`). */
export const EVENT_TYPES = [
  "session.ready",
  "speech.started",
  "speech.ended",
  "interrupted",
  "chunk.stats",
  "audio.queued",
  "error",
  "closed",
];

const PCM16_FULL_SCALE = 32767;
const MS_PER_S = 1000;
const EVENTS_CHANNEL_LABEL = "events";
const WS_NORMAL_CLOSE = 1000;

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

/** A server event as a Session dispatches it: `event.type`, the server's JSON in `event.data`. */
export class HeadcastEvent extends Event {
  /** @param {{type: string} & Record<string, unknown>} data */
  constructor(data) {
    super(data.type);
    /** The event as the server sent it, e.g. `{type: "speech.ended", duration_ms: 1500}`. */
    this.data = data;
  }
}

/**
 * One server-side session: what POST /v1/sessions returned, its peer connection and, for push
 * sessions, its audio WebSocket. Dispatches the server's events (`on` / `addEventListener`).
 */
export class Session extends EventTarget {
  /**
   * @param {string} baseUrl
   * @param {{id: string, token: string, expires_at?: string, ice_servers?: RTCIceServer[],
   *          audio_source?: "mic" | "push", sample_rate?: number, audio_path?: string | null}} body
   */
  constructor(baseUrl, body) {
    super();
    this.baseUrl = trimSlash(baseUrl);
    this.id = body.id;
    this.token = body.token;
    this.expiresAt = body.expires_at ? new Date(body.expires_at) : null;
    this.iceServers = body.ice_servers ?? [];
    /** "mic" (a microphone drives the avatar) or "push" (your audio, through speak()). */
    this.audioSource = body.audio_source ?? "mic";
    /** Sample rate speak() takes, in Hz (push sessions). */
    this.sampleRate = body.sample_rate ?? PUSH_SAMPLE_RATES[0];
    this.audioPath = body.audio_path ?? null;
    /** How far ahead of playback speak() may queue audio on the server, in milliseconds. */
    this.aheadMs = DEFAULT_AHEAD_MS;
    /** @type {RTCPeerConnection | null} */
    this.pc = null;
    /** @type {WebSocket | null} the audio WebSocket (push sessions, once connected) */
    this.socket = null;
    /** @type {RTCDataChannel | null} the events channel (mic sessions, once connected) */
    this.channel = null;
    /** True once the first video frame was sent (`session.ready`). */
    this.ready = false;
    this.closed = false;
    this.keepAliveTimer = null;
    this._serverQueuedMs = 0;
    /** @type {number[]} milliseconds of every audio frame sent and not yet answered */
    this._unacked = [];
    /** Bumped by interrupt() and close(): speak() calls of an older generation stop. */
    this._generation = 0;
    this._outbox = Promise.resolve();
    this._wakers = [];
    /** @type {HeadcastError | null} why audio cannot be sent (a refused frame, a lost socket) */
    this._audioError = null;
    /** @type {{code: string, message: string} | null} the server's latest `error` event */
    this._lastServerError = null;
  }

  /** The Authorization header this session's requests carry. */
  get authHeaders() {
    return { Authorization: `Bearer ${this.token}` };
  }

  /** True for a chatbot-mode session (created with `audioSource: "push"`). */
  get isPush() {
    return this.audioSource === "push";
  }

  /** Pushed audio not yet played, as far as the client knows, in milliseconds. */
  get queuedMs() {
    return this._serverQueuedMs + this._unacked.reduce((sum, ms) => sum + ms, 0);
  }

  /**
   * Call `handler(data)` for every event of `type` (see EVENT_TYPES); returns a function that
   * removes the handler. `addEventListener(type, (event) => event.data)` works the same way.
   * @param {string} type
   * @param {(data: any) => void} handler
   * @returns {() => void}
   */
  on(type, handler) {
    const listener = (event) => handler(event.data);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /**
   * Speak PCM at the session's sample rate (mono; Int16Array, or Float32Array in [-1, 1]).
   * Sent in 100 ms frames, never more than `aheadMs` ahead of playback: it waits for room
   * instead of overflowing the server's queue. Resolves true once every sample is sent, false
   * if interrupt() or close() cut it short; rejects if the server refused audio.
   * @param {Int16Array | Float32Array} samples
   * @returns {Promise<boolean>}
   */
  speak(samples) {
    return this._enqueue((generation) => this._sendPcm(toPcm16(samples), generation));
  }

  /**
   * Speak a stream of audio chunks (Int16Array, Float32Array, or PCM16 little-endian bytes as
   * ArrayBuffer / Uint8Array, e.g. a fetch() body) as they arrive; resolves as speak() does.
   * @param {ReadableStream<Int16Array | Float32Array | ArrayBuffer | Uint8Array>} stream
   * @returns {Promise<boolean>}
   */
  speakStream(stream) {
    return this._enqueue(async (generation) => {
      const reader = stream.getReader();
      const bytes = new PcmBytes();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return true;
          const pcm = bytes.take(value);
          if (!(await this._sendPcm(pcm, generation))) {
            await reader.cancel();
            return false;
          }
        }
      } finally {
        reader.releaseLock();
      }
    });
  }

  /**
   * The utterance is complete: its last partial chunk is played and `speech.ended` follows.
   * Waits for the speak() calls before it. Resolves false if interrupt()/close() came first.
   * @returns {Promise<boolean>}
   */
  audioEnd() {
    return this._enqueue(async (generation) => {
      if (generation !== this._generation) return false;
      this._send(JSON.stringify({ type: "audio.end" }));
      return true;
    });
  }

  /**
   * Stop the avatar mid-utterance: queued audio and unplayed frames are dropped, pending
   * speak() calls resolve false. Resolves with the `interrupted` event's data (`played_ms`).
   * @returns {Promise<{type: "interrupted", played_ms: number}>}
   */
  async interrupt() {
    this._generation += 1;
    this._wake();
    if (!this._socketOpen()) {
      return request(this.baseUrl, `/v1/sessions/${encodeURIComponent(this.id)}/interrupt`, {
        method: "POST",
        headers: this.authHeaders,
      });
    }
    const interrupted = this._nextEvent("interrupted", INTERRUPT_TIMEOUT_MS);
    this.socket.send(JSON.stringify({ type: "interrupt" }));
    return interrupted;
  }

  /** Tell the server the client is still there while it sends no media. */
  async keepAlive() {
    if (this._socketOpen()) {
      this.socket.send(JSON.stringify({ type: "keep_alive" }));
      return;
    }
    await request(this.baseUrl, `/v1/sessions/${encodeURIComponent(this.id)}/keepalive`, {
      method: "POST",
      headers: this.authHeaders,
    });
  }

  /** Hang up, in any state: stop speaking, close the socket and the peer connection, delete the
   * session on the server. Idempotent; dispatches `closed`. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this._generation += 1;
    this._wake();
    clearInterval(this.keepAliveTimer);
    if (this.socket) {
      this.socket.close(WS_NORMAL_CLOSE);
      this.socket = null;
    }
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
    this.dispatchEvent(new HeadcastEvent({ type: "closed", reason: "closed by the client" }));
  }

  // -- internals (used by connect) ---------------------------------------------------------

  /** Take one JSON event from the socket or the data channel. */
  _onText(text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      console.warn("headcast: the server sent a message that is not JSON", text);
      return;
    }
    if (typeof data?.type !== "string") return;
    switch (data.type) {
      case "session.ready":
        this.ready = true;
        break;
      case "audio.queued":
        this._unacked.shift();
        this._serverQueuedMs = data.queued_ms;
        break;
      case "chunk.stats":
        this._serverQueuedMs = data.queued_ms;
        break;
      case "interrupted":
        this._serverQueuedMs = 0;
        break;
      case "error":
        this._lastServerError = data;
        if (REFUSED_AUDIO_CODES.includes(data.code)) {
          this._unacked.shift();
          this._audioError = new HeadcastError(
            `The server refused audio (${data.code}): ${data.message}`,
            { code: "audio-refused" },
          );
        }
        break;
    }
    this._wake();
    this.dispatchEvent(new HeadcastEvent(data));
  }

  /** The audio WebSocket closed; unless we closed it, nothing more can be spoken. */
  _onSocketClosed(event) {
    this.socket = null;
    if (this.closed) return;
    const why = this._lastServerError?.message ?? event.reason ?? "";
    this._audioError = new HeadcastError(
      `The audio connection closed (${event.code}${why ? `: ${why}` : ""}); start a new session.`,
      { code: event.code === WS_NORMAL_CLOSE ? "session-ended" : "socket-closed" },
    );
    this._wake();
    this.dispatchEvent(new HeadcastEvent({ type: "closed", reason: this._audioError.message }));
  }

  _enqueue(task) {
    if (!this.isPush) {
      return Promise.reject(
        new HeadcastError(
          'speak() needs a push session: createSession(url, {audioSource: "push"}).',
          { code: "not-push-session" },
        ),
      );
    }
    const generation = this._generation;
    const run = this._outbox.then(() => task(generation));
    this._outbox = run.catch(() => undefined);
    return run;
  }

  async _sendPcm(pcm, generation) {
    const perFrame = Math.round((this.sampleRate * PUSH_FRAME_MS) / MS_PER_S);
    const aheadMs = Math.max(this.aheadMs, MIN_AHEAD_MS);
    for (let start = 0; start < pcm.length; start += perFrame) {
      const frame = pcm.subarray(start, start + perFrame);
      const frameMs = (frame.length * MS_PER_S) / this.sampleRate;
      while (this.queuedMs + frameMs > aheadMs && this._current(generation)) {
        this._throwAudioError();
        await this._progress();
      }
      if (!this._current(generation)) return false;
      this._throwAudioError();
      this._send(frame);
      this._unacked.push(frameMs);
    }
    return this._current(generation);
  }

  _current(generation) {
    return generation === this._generation && !this.closed;
  }

  _send(data) {
    if (!this._socketOpen()) {
      throw new HeadcastError("The session is not connected: await connect(session) first.", {
        code: "not-connected",
      });
    }
    this.socket.send(data);
  }

  _socketOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  _throwAudioError() {
    const error = this._audioError;
    if (error && error.code === "audio-refused") this._audioError = null;
    if (error) throw error;
  }

  /** Resolve at the next queue feedback (or after one frame's time, to look again). */
  _progress() {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, PUSH_FRAME_MS);
      this._wakers.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  _wake() {
    const wakers = this._wakers;
    this._wakers = [];
    wakers.forEach((wake) => wake());
  }

  /** The next event of `type`, or a HeadcastError after `timeoutMs`. */
  _nextEvent(type, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new HeadcastError(`The server did not answer with ${type} in ${timeoutMs} ms.`));
      }, timeoutMs);
      const off = this.on(type, (data) => {
        clearTimeout(timer);
        off();
        resolve(data);
      });
    });
  }
}

/** Error codes with which the server refuses one audio frame (the frame is dropped whole). */
const REFUSED_AUDIO_CODES = ["audio_buffer_full", "frame_too_large", "bad_audio_frame"];

/**
 * Samples as PCM16: an Int16Array as it is, a Float32Array in [-1, 1] scaled and clipped.
 * @param {Int16Array | Float32Array} samples
 * @returns {Int16Array}
 */
export function toPcm16(samples) {
  if (samples instanceof Int16Array) return samples;
  if (samples instanceof Float32Array) {
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) {
      pcm[i] = Math.round(Math.max(-1, Math.min(1, samples[i])) * PCM16_FULL_SCALE);
    }
    return pcm;
  }
  throw new HeadcastError("speak() takes an Int16Array or a Float32Array of mono samples.", {
    code: "bad-audio",
  });
}

/** Turns a stream's chunks into whole PCM16 samples (byte chunks may split a sample). */
class PcmBytes {
  constructor() {
    /** @type {number | null} an odd byte left over from the previous chunk */
    this.carry = null;
  }

  /** @param {Int16Array | Float32Array | ArrayBuffer | Uint8Array} chunk */
  take(chunk) {
    if (chunk instanceof Int16Array || chunk instanceof Float32Array) return toPcm16(chunk);
    const incoming = chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk;
    if (!(incoming instanceof Uint8Array)) {
      throw new HeadcastError("speakStream() chunks are Int16Array, Float32Array or PCM16 bytes.", {
        code: "bad-audio",
      });
    }
    const carried = this.carry === null ? 0 : 1;
    const bytes = new Uint8Array(carried + incoming.length);
    if (carried) bytes[0] = this.carry;
    bytes.set(incoming, carried);
    const whole = bytes.length - (bytes.length % 2);
    this.carry = whole < bytes.length ? bytes[whole] : null;
    return new Int16Array(bytes.buffer, 0, whole / 2); // little-endian on every browser platform
  }
}

/**
 * Ask the server for a session.
 * @param {string} baseUrl e.g. "" (this page's server) or "https://avatar.example.com"
 * @param {{avatar?: string, apiKey?: string, audioSource?: "mic" | "push", sampleRate?: number}}
 *   [options] `apiKey` for servers that require one; `audioSource: "push"` for chatbot mode,
 *   with the `sampleRate` of the audio you will speak (16000, 24000 or 48000)
 * @returns {Promise<Session>}
 */
export async function createSession(
  baseUrl,
  { avatar = "default", apiKey, audioSource = "mic", sampleRate } = {},
) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const body = { avatar };
  if (audioSource !== "mic") {
    body.audio_source = audioSource;
    body.sample_rate = sampleRate ?? PUSH_SAMPLE_RATES[0];
  }
  const created = await request(baseUrl, "/v1/sessions", {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  return new Session(baseUrl, created);
}

/** Avatar statuses that do not change any more. */
const AVATAR_SETTLED = new Set(["ready", "failed"]);

/** How often waitAvatar() asks for an avatar's status, in milliseconds. */
export const AVATAR_POLL_MS = 500;

/** How long waitAvatar() waits by default, in milliseconds. */
export const AVATAR_WAIT_MS = 120000;

function keyHeaders(apiKey) {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

/**
 * Add an avatar from a photo (a File or Blob: JPEG, PNG or WebP of one face). The server
 * answers at once with the avatar `pending` and prepares it in the background: follow it
 * with waitAvatar(), then pass its `id` as `avatar` to createSession().
 * @param {string} baseUrl
 * @param {Blob} photo
 * @param {{name?: string, prompt?: string, apiKey?: string}} [options]
 * @returns {Promise<object>} the avatar: {id, status, progress, error, message, preview_url, …}
 */
export async function createAvatar(baseUrl, photo, { name, prompt, apiKey } = {}) {
  const form = new FormData();
  form.append("image", photo, photo.name ?? "photo");
  if (name) form.append("name", name);
  if (prompt) form.append("prompt", prompt);
  return request(baseUrl, "/v1/avatars", { method: "POST", headers: keyHeaders(apiKey), body: form });
}

/** One avatar: its status (`pending`, `preparing`, `ready`, `failed`), progress, error. */
export async function getAvatar(baseUrl, id, { apiKey } = {}) {
  return request(baseUrl, `/v1/avatars/${encodeURIComponent(id)}`, { headers: keyHeaders(apiKey) });
}

/** Every avatar: `default` first, then the added ones. */
export async function listAvatars(baseUrl, { apiKey } = {}) {
  const body = await request(baseUrl, "/v1/avatars", { headers: keyHeaders(apiKey) });
  return body.avatars;
}

/** Delete an avatar (refused while a session uses it, and for `default`). */
export async function deleteAvatar(baseUrl, id, { apiKey } = {}) {
  await request(baseUrl, `/v1/avatars/${encodeURIComponent(id)}`, {
    method: "DELETE",
    headers: keyHeaders(apiKey),
  });
}

/**
 * Follow an avatar until it is `ready` or `failed` (returned either way: a failed avatar's
 * `message` says why in words). `onProgress(avatar)` sees every status read on the way.
 */
export async function waitAvatar(
  baseUrl,
  id,
  { apiKey, onProgress, timeoutMs = AVATAR_WAIT_MS } = {},
) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const avatar = await getAvatar(baseUrl, id, { apiKey });
    onProgress?.(avatar);
    if (AVATAR_SETTLED.has(avatar.status)) return avatar;
    if (Date.now() > deadline) {
      throw new HeadcastError(
        `The avatar is still ${avatar.status} after ${timeoutMs / 1000} s; try again later.`,
        { code: "avatar-timeout" },
      );
    }
    await new Promise((resolve) => setTimeout(resolve, AVATAR_POLL_MS));
  }
}

/**
 * Start the WebRTC call and receive the avatar's video and its audio.
 *
 * A mic session sends `micStream`'s audio (a sendrecv audio transceiver: your audio out, the
 * avatar's voice back) and opens the `events` data channel for the session's events. A push
 * session receives only (no `micStream`) and opens the audio WebSocket that speak() uses and
 * the events arrive on. Gathers ICE fully (the server does not trickle), sends the offer and
 * applies the answer. While connected it sends a keep-alive every 30 s.
 *
 * @param {Session} session from createSession
 * @param {MediaStream} [micStream] audio to animate the avatar with (mic sessions)
 * @param {{onConnectionStateChange?: (state: RTCPeerConnectionState) => void,
 *   iceTransportPolicy?: RTCIceTransportPolicy}} [options] `iceTransportPolicy: "relay"`
 *   sends everything through the session's TURN server (a deployment check, or to hide the
 *   caller's addresses); the call then fails with code "turn-refused" or "turn-unreachable"
 *   when the TURN server gives no relay.
 * @returns {Promise<{pc: RTCPeerConnection, videoStream: MediaStream}>} `videoStream` holds
 *   the remote video track and the remote audio track, ready for a <video> element.
 */
export async function connect(
  session,
  micStream,
  { onConnectionStateChange, iceTransportPolicy = "all" } = {},
) {
  if (session.closed) throw new HeadcastError("This session is closed; start a new call.");
  const micTrack = micStream?.getAudioTracks()[0];
  if (!session.isPush && !micTrack) {
    throw new HeadcastError("The audio stream has no audio track: check the microphone.", {
      code: "no-audio-track",
    });
  }
  const pc = new RTCPeerConnection({ iceServers: session.iceServers, iceTransportPolicy });
  session.pc = pc;
  /** @type {RTCPeerConnectionIceErrorEvent[]} */
  const turnErrors = [];
  pc.addEventListener("icecandidateerror", (event) => turnErrors.push(event));
  const videoStream = new MediaStream();
  pc.ontrack = (event) => videoStream.addTrack(event.track);
  if (onConnectionStateChange) {
    pc.onconnectionstatechange = () => onConnectionStateChange(pc.connectionState);
  }

  if (session.isPush) {
    pc.addTransceiver("audio", { direction: "recvonly" });
  } else {
    pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [micStream] });
    session.channel = pc.createDataChannel(EVENTS_CHANNEL_LABEL);
    session.channel.onmessage = (message) => session._onText(String(message.data));
  }
  pc.addTransceiver("video", { direction: "recvonly" });

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, ICE_GATHERING_TIMEOUT_MS);
    if (iceTransportPolicy === "relay" && !/ typ relay/.test(pc.localDescription.sdp)) {
      throw relayError(turnErrors);
    }
    const answer = await request(
      session.baseUrl,
      `/v1/sessions/${encodeURIComponent(session.id)}/offer`,
      {
        method: "POST",
        headers: { "Content-Type": "application/json", ...session.authHeaders },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      },
    );
    throwIfClosed(session);
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (session.isPush) {
      session.socket = await openAudioSocket(session);
      throwIfClosed(session);
    }
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

function throwIfClosed(session) {
  if (session.closed) {
    throw new HeadcastError("The session was closed while connecting.", { code: "closed" });
  }
}

/**
 * Open a push session's audio WebSocket; every event on it goes to the session. A socket the
 * server refuses (an `error` event, then close code 4000 + HTTP status) ends up in the
 * session's `error` and `closed` events, and speak() rejects with the reason.
 */
function openAudioSocket(session) {
  const path = session.audioPath ?? `/v1/sessions/${encodeURIComponent(session.id)}/audio`;
  const url = new URL(path, session.baseUrl ? `${session.baseUrl}/` : location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", session.token);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (message) => {
    if (typeof message.data === "string") session._onText(message.data);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(
        new HeadcastError(`The audio connection did not open in ${REQUEST_TIMEOUT_MS / 1000} s.`, {
          code: "network",
        }),
      );
    }, REQUEST_TIMEOUT_MS);
    socket.onopen = () => {
      clearTimeout(timer);
      socket.onclose = (event) => session._onSocketClosed(event);
      resolve(socket);
    };
    socket.onclose = (event) => {
      clearTimeout(timer);
      reject(
        new HeadcastError(`The audio connection closed before it opened (${event.code}).`, {
          code: "network",
        }),
      );
    };
  });
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

/** The error of a relay-only call that got no relay candidate, from the TURN errors seen. */
function relayError(turnErrors) {
  const refused = turnErrors.find((e) => e.errorCode === 401);
  if (refused) {
    return new HeadcastError(
      `The relay (TURN) server ${refused.url} refused the session's credentials ` +
        "(401): they expired or the server's TURN secret does not match; start a new call.",
      { code: "turn-refused" },
    );
  }
  const other = turnErrors[0];
  const why = other ? ` (${other.url}: ${other.errorCode} ${other.errorText})` : "";
  return new HeadcastError(
    `The relay (TURN) server could not be reached${why}; check the network or try again.`,
    { code: "turn-unreachable" },
  );
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
  if (status === 409 && problem?.type?.endsWith(":avatar-not-ready")) {
    const wait = retryAfterS ? `retry in ${retryAfterS} s` : "retry in a moment";
    return new HeadcastError(`The avatar is still being prepared; ${wait}.`, {
      status,
      code: "avatar-not-ready",
      retryAfterS,
    });
  }
  if (status === 413 || status === 415) {
    return new HeadcastError(`The photo was refused: ${detail}`, { status, code: "bad-photo" });
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
