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
// controls="false").
// Methods: start(audioStream?) — with no argument, uses the microphone; pass a MediaStream
// to drive the avatar with a chatbot's TTS audio (e.g. a WebAudio MediaStreamDestination);
// stop(); interrupt() — cut the avatar off mid-utterance.
// Property: sessionProvider — an async function returning the JSON of POST /v1/sessions,
// for servers with API keys: your backend creates the session, the key never reaches the
// browser. Unset: the widget creates the session itself.
// Events: "headcast-state" (detail: {state}), "headcast-error" (detail: {message, code,
// retryAfterS}).

import { HeadcastError, Session, connect, createSession, openMicrophone } from "./headcast.js";

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

  /** Start a call. `audioStream` defaults to the microphone. */
  async start(audioStream) {
    if (this.session) return;
    this.button.disabled = true;
    this.setStatus("connecting…");
    try {
      const stream = audioStream ?? (this.ownedStream = await openMicrophone());
      const server = this.getAttribute("server") ?? SCRIPT_ORIGIN;
      this.session = this.sessionProvider
        ? new Session(server, await this.sessionProvider())
        : await createSession(server, { avatar: this.getAttribute("avatar") ?? "default" });
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

  /** Stop the avatar mid-utterance (the call stays up). */
  async interrupt() {
    if (this.session) await this.session.interrupt();
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
