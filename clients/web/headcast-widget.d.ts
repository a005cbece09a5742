// Type declarations of headcast-widget.js, the <headcast-avatar> custom element.

import type {
  AudioChunk,
  AudioSource,
  HeadcastEventMap,
  HeadcastEventType,
  Samples,
  Session,
  SessionBody,
} from "./headcast.js";

/** The detail of the widget's own events. */
export interface HeadcastAvatarEventMap {
  "headcast-state": CustomEvent<{ state: RTCPeerConnectionState }>;
  "headcast-error": CustomEvent<{ message: string; code?: string; retryAfterS?: number }>;
}

/**
 * `<headcast-avatar server="…" avatar="default" audio-source="mic|push" sample-rate="24000">`.
 * Session events are dispatched on the element under their own type (detail: the data).
 */
export declare class HeadcastAvatar extends HTMLElement {
  /** The backend that creates sessions (servers with API keys); unset: the widget does. */
  sessionProvider: null | (() => Promise<SessionBody>);
  readonly session: Session | null;
  readonly audioSource: AudioSource;
  /** Start: a mic widget uses `audioStream` or the microphone; a push widget needs none. */
  start(audioStream?: MediaStream): Promise<void>;
  stop(): Promise<void>;
  interrupt(): Promise<HeadcastEventMap["interrupted"]>;
  speak(samples: Samples): Promise<boolean>;
  speakStream(stream: ReadableStream<AudioChunk>): Promise<boolean>;
  audioEnd(): Promise<boolean>;
  keepAlive(): Promise<void>;
  on<K extends HeadcastEventType>(type: K, handler: (data: HeadcastEventMap[K]) => void): () => void;
  addEventListener<K extends keyof HeadcastAvatarEventMap>(
    type: K,
    listener: (event: HeadcastAvatarEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener<K extends HeadcastEventType>(
    type: K,
    listener: (event: CustomEvent<HeadcastEventMap[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ): void;
}

declare global {
  interface HTMLElementTagNameMap {
    "headcast-avatar": HeadcastAvatar;
  }
}
