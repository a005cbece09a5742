// headcast-widget.js — <headcast-avatar>: a talking head to drop into a chatbot frontend.
//
// Owns one call's lifecycle inside a custom element with its own shadow DOM: a portrait
// video, a Start/Stop button and a one-line status. Uses headcast.js for the protocol.
//
//   <script type="module" src="https://avatar.example.com/static/headcast-widget.js"></script>
//   <headcast-avatar server="https://avatar.example.com" avatar="default"></headcast-avatar>
//
// Attributes: server (base URL; default: where this script came from), avatar (default
// "default"), controls (present: show the Start/Stop button; default shown unless
// controls="false"), audio-source ("mic", the default, or "push": chatbot mode) and
// sample-rate (of the audio you will speak in push mode: 16000, 24000 or 48000).
// Methods: start(audioStream?) — a mic widget uses the microphone unless given a MediaStream;
// a push widget needs none; stop(); interrupt() — cut the avatar off mid-utterance; in push
// mode the Session's speech API: speak(samples), speakStream(stream), audioEnd(),
// keepAlive(), and on(type, handler) for the session's events.
// Property: sessionProvider — an async function returning the JSON of POST /v1/sessions,
// for servers with API keys: your backend creates the session, the key never reaches the
// browser. Unset: the widget creates the session itself.
// Events: "headcast-state" (detail: {state}), "headcast-error" (detail: {message, code,
// retryAfterS}), and every session event under its own type ("session.ready",
// "speech.started", "speech.ended", "interrupted", "chunk.stats", "error", ...; detail: the
// event's data).

import {
  EVENT_TYPES,
  HeadcastError,
  Session,
  connect,
  createSession,
  openMicrophone,
} from "./headcast.js";

const SCRIPT_ORIGIN = new URL(import.meta.url).origin;

const TEMPLATE = `
  <style>
    :host { display: inline-block; width: 224px; font: 14px system-ui, sans-serif; }
    .frame { position: relative; aspect-ratio: 448 / 768; background: #111; border-radius: 12px;
             overflow: hidden; }
    video { width: 100%; height: 100%; object-fit: cover; display: block; }
    .bar { display: flex; gap: 8px; align-items: center; margin-top: 6px; }
    button { border: 0; border-radius: 6px; padding: 6px 14px; background: #2563eb; color: #fff;
             cursor: pointer; font: inherit; }
    button.stop { background: #dc2626; }
    button:disabled { opacity: 0.5; cursor: default; }
    .status { color: #555; flex: 1; }
    .status.error { color: #b91c1c; }
  </style>
  <div class="frame"><video playsinline autoplay width="448" height="768"></video></div>
  <div class="bar"><button type="button">Start</button><span class="status">idle</span></div>
`;

export class HeadcastAvatar extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = TEMPLATE;
    this.video = root.querySelector("video");
    this.button = root.querySelector("button");
    this.statusLine = root.querySelector(".status");
    this.session = null;
    this.ownedStream = null;
    /** @type {null | (() => Promise<object>)} */
    this.sessionProvider = null;
    this.button.addEventListener("click", () => (this.session ? this.stop() : this.start()));
  }

  static get observedAttributes() {
    return ["controls"];
  }

  connectedCallback() {
    this.attributeChangedCallback();
  }

  attributeChangedCallback() {
    this.button.hidden = this.getAttribute("controls") === "false";
  }

  disconnectedCallback() {
    this.stop();
  }

  /** "mic" or "push", from the audio-source attribute. */
  get audioSource() {
    return this.getAttribute("audio-source") === "push" ? "push" : "mic";
  }

  /** Start a call. A mic widget uses `audioStream`, or the microphone; a push widget none. */
  async start(audioStream) {
    if (this.session) return;
    this.button.disabled = true;
    this.setStatus("connecting…");
    try {
      const push = this.audioSource === "push";
      const stream = push
        ? undefined
        : (audioStream ?? (this.ownedStream = await openMicrophone()));
      const server = this.getAttribute("server") ?? SCRIPT_ORIGIN;
      this.session = this.sessionProvider
        ? new Session(server, await this.sessionProvider())
        : await createSession(server, {
            avatar: this.getAttribute("avatar") ?? "default",
            audioSource: this.audioSource,
            sampleRate: Number(this.getAttribute("sample-rate") ?? 16000),
          });
      for (const type of EVENT_TYPES) {
        const forward = (data) => this.dispatchEvent(new CustomEvent(type, { detail: data }));
        this.session.on(type, forward);
      }
      const { videoStream } = await connect(this.session, stream, {
        onConnectionStateChange: (state) => {
          this.setStatus(state);
          this.dispatchEvent(new CustomEvent("headcast-state", { detail: { state } }));
          if (state === "failed") this.fail(new HeadcastError("The connection failed; press Start to retry."));
        },
      });
      this.video.srcObject = videoStream;
      this.button.textContent = "Stop";
      this.button.classList.add("stop");
    } catch (err) {
      this.fail(err);
    } finally {
      this.button.disabled = false;
    }
  }

  /** Stop the avatar mid-utterance (the call stays up); resolves with `{played_ms}`. */
  async interrupt() {
    return this.requireSession().interrupt();
  }

  /** Push mode: speak Int16Array / Float32Array samples (see Session.speak). */
  async speak(samples) {
    return this.requireSession().speak(samples);
  }

  /** Push mode: speak a ReadableStream of audio chunks (see Session.speakStream). */
  async speakStream(stream) {
    return this.requireSession().speakStream(stream);
  }

  /** Push mode: the utterance is complete (see Session.audioEnd). */
  async audioEnd() {
    return this.requireSession().audioEnd();
  }

  /** Client activity without media. */
  async keepAlive() {
    return this.requireSession().keepAlive();
  }

  /** Call `handler(data)` for every session event of `type`; returns a function that removes it. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  requireSession() {
    if (!this.session) {
      throw new HeadcastError("The avatar is not started: call start() first.", {
        code: "not-started",
      });
    }
    return this.session;
  }

  /** Hang up and release the microphone if the widget opened it. */
  async stop() {
    const session = this.session;
    this.session = null;
    this.video.srcObject = null;
    this.ownedStream?.getTracks().forEach((track) => track.stop());
    this.ownedStream = null;
    this.button.textContent = "Start";
    this.button.classList.remove("stop");
    if (session) {
      this.setStatus("idle");
      await session.close();
    }
  }

  fail(err) {
    const message = err instanceof HeadcastError ? err.message : `Unexpected error: ${err?.message ?? err}`;
    this.stop();
    this.setStatus(message, true);
    this.dispatchEvent(
      new CustomEvent("headcast-error", {
        detail: { message, code: err?.code, retryAfterS: err?.retryAfterS },
      }),
    );
  }

  setStatus(text, isError = false) {
    this.statusLine.textContent = text;
    this.statusLine.classList.toggle("error", isError);
  }
}

if (!customElements.get("headcast-avatar")) {
  customElements.define("headcast-avatar", HeadcastAvatar);
}
