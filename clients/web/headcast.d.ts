// Type declarations of headcast.js, the browser SDK of a headcast server.

export declare const ICE_GATHERING_TIMEOUT_MS: number;
export declare const REQUEST_TIMEOUT_MS: number;
export declare const KEEPALIVE_INTERVAL_MS: number;
export declare const PUSH_FRAME_MS: number;
export declare const DEFAULT_AHEAD_MS: number;
export declare const MIN_AHEAD_MS: number;
export declare const INTERRUPT_TIMEOUT_MS: number;
export declare const PUSH_SAMPLE_RATES: readonly PushSampleRate[];
export declare const EVENT_TYPES: readonly HeadcastEventType[];

/** Where a session's speech comes from: a microphone, or audio you push (chatbot mode). */
export type AudioSource = "mic" | "push";

/** Sample rates a push session takes, in Hz. */
export type PushSampleRate = 16000 | 24000 | 48000;

/** Why a chunk went out idle instead of generated (`chunk.stats`). */
export type ChunkProblem =
  | "late"
  | "engine_error"
  | "engine_busy"
  | "bad_output"
  | "interrupted"
  | "loop";

/** The server's events, by type (docs/protocol.md), plus the client's own `closed`. */
export interface HeadcastEventMap {
  "session.ready": { type: "session.ready" };
  /** `wait_ms`: how long the utterance waited for a generation slot (`idle_mode: loop`). */
  "speech.started": { type: "speech.started"; wait_ms: number };
  "speech.ended": { type: "speech.ended"; duration_ms: number };
  interrupted: { type: "interrupted"; played_ms: number };
  "chunk.stats": {
    type: "chunk.stats";
    index: number;
    compute_ms: number | null;
    rtf: number | null;
    queued_ms: number;
    problem: ChunkProblem | null;
  };
  "audio.queued": { type: "audio.queued"; queued_ms: number };
  error: { type: "error"; code: string; message: string };
  closed: { type: "closed"; reason: string };
}

export type HeadcastEventType = keyof HeadcastEventMap;

/** What `HeadcastError.code` can be. */
export type HeadcastErrorCode =
  | "capacity"
  | "warming-up"
  | "avatar-not-ready"
  | "avatar-timeout"
  | "bad-photo"
  | "unauthorized"
  | "not-found"
  | "network"
  | "http"
  | "mic-denied"
  | "mic-missing"
  | "mic-busy"
  | "mic-unavailable"
  | "mic-error"
  | "no-audio-track"
  | "not-push-session"
  | "not-connected"
  | "not-started"
  | "audio-refused"
  | "bad-audio"
  | "socket-closed"
  | "session-ended"
  | "turn-refused"
  | "turn-unreachable"
  | "closed";

/** An error with a sentence meant for the person using the page. */
export declare class HeadcastError extends Error {
  constructor(
    message: string,
    details?: { status?: number; code?: string; retryAfterS?: number; cause?: unknown },
  );
  /** HTTP status, when the server answered. */
  readonly status: number | undefined;
  /** A short machine-readable reason. */
  readonly code: HeadcastErrorCode | undefined;
  /** Seconds the server asked to wait before retrying (429 / 503). */
  readonly retryAfterS: number | undefined;
}

/** A server event as a Session dispatches it; the server's JSON is in `data`. */
export declare class HeadcastEvent<K extends HeadcastEventType = HeadcastEventType> extends Event {
  constructor(data: HeadcastEventMap[K]);
  readonly type: K;
  readonly data: HeadcastEventMap[K];
}

/** The JSON of `POST /v1/sessions` (what a backend hands the browser). */
export interface SessionBody {
  id: string;
  token: string;
  expires_at?: string;
  ice_servers?: RTCIceServer[];
  audio_source?: AudioSource;
  sample_rate?: number;
  audio_path?: string | null;
}

/** Mono audio samples: PCM16, or float in [-1, 1]. */
export type Samples = Int16Array | Float32Array;

/** What speakStream() reads: samples, or PCM16 little-endian bytes. */
export type AudioChunk = Samples | ArrayBuffer | Uint8Array;

export interface Session {
  addEventListener<K extends HeadcastEventType>(
    type: K,
    listener: (event: HeadcastEvent<K>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends HeadcastEventType>(
    type: K,
    listener: (event: HeadcastEvent<K>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** One server-side session, its peer connection and (push sessions) its audio WebSocket. */
export declare class Session extends EventTarget {
  constructor(baseUrl: string, body: SessionBody);
  readonly baseUrl: string;
  readonly id: string;
  readonly token: string;
  readonly expiresAt: Date | null;
  readonly iceServers: RTCIceServer[];
  readonly audioSource: AudioSource;
  /** Sample rate speak() takes, in Hz. */
  readonly sampleRate: number;
  readonly audioPath: string | null;
  /** How far ahead of playback speak() may queue audio (at least MIN_AHEAD_MS), in ms. */
  aheadMs: number;
  readonly pc: RTCPeerConnection | null;
  readonly socket: WebSocket | null;
  readonly channel: RTCDataChannel | null;
  /** True once the avatar is live (`session.ready`). */
  readonly ready: boolean;
  readonly closed: boolean;
  readonly authHeaders: { Authorization: string };
  readonly isPush: boolean;
  /** Pushed audio not yet played, as far as the client knows, in milliseconds. */
  readonly queuedMs: number;

  /** Call `handler` with each event of `type`; returns a function that removes it. */
  on<K extends HeadcastEventType>(type: K, handler: (data: HeadcastEventMap[K]) => void): () => void;
  /** Push sessions: speak samples; true once sent, false if interrupted or closed first. */
  speak(samples: Samples): Promise<boolean>;
  /** Push sessions: speak a stream of chunks as they arrive. */
  speakStream(stream: ReadableStream<AudioChunk>): Promise<boolean>;
  /** Push sessions: the utterance is complete (`speech.ended` follows). */
  audioEnd(): Promise<boolean>;
  /** Stop the avatar mid-utterance; resolves with the `interrupted` event. */
  interrupt(): Promise<HeadcastEventMap["interrupted"]>;
  keepAlive(): Promise<void>;
  /** Hang up in any state; idempotent. */
  close(): Promise<void>;
}

export interface CreateSessionOptions {
  /** An avatar id: "default", or one from createAvatar() (ready). */
  avatar?: string;
  /** An API key, for servers that require one (keep keys out of public pages). */
  apiKey?: string;
  audioSource?: AudioSource;
  /** Sample rate of the audio you will speak (push sessions). */
  sampleRate?: PushSampleRate;
}

export declare function createSession(
  baseUrl: string,
  options?: CreateSessionOptions,
): Promise<Session>;

export type AvatarStatus = "pending" | "preparing" | "ready" | "failed";

/** An avatar as `/v1/avatars` describes it. */
export interface Avatar {
  /** Pass it as `avatar` to createSession(). */
  id: string;
  name: string | null;
  prompt: string | null;
  status: AvatarStatus;
  /** 0 to 1. */
  progress: number;
  /** Why it failed: "no_face", "too_small", "unreadable", "engine_error", "internal_error". */
  error: string | null;
  /** Why it failed, in words; or a note (several faces found). */
  message: string | null;
  /** The framed picture (PNG at the output size), once made. */
  preview_url: string | null;
  faces: number | null;
  face: { x: number; y: number; width: number; height: number } | null;
  source: { format: string; width: number; height: number };
  created_at: string;
  updated_at: string;
  prepare_seconds: number | null;
}

export interface AvatarOptions {
  /** An API key, for servers that require one (keep keys out of public pages). */
  apiKey?: string;
}

export declare const AVATAR_POLL_MS: number;
export declare const AVATAR_WAIT_MS: number;
export declare function createAvatar(
  baseUrl: string,
  photo: Blob,
  options?: AvatarOptions & { name?: string; prompt?: string },
): Promise<Avatar>;
export declare function getAvatar(baseUrl: string, id: string, options?: AvatarOptions): Promise<Avatar>;
export declare function listAvatars(baseUrl: string, options?: AvatarOptions): Promise<Avatar[]>;
export declare function deleteAvatar(baseUrl: string, id: string, options?: AvatarOptions): Promise<void>;
export declare function waitAvatar(
  baseUrl: string,
  id: string,
  options?: AvatarOptions & { onProgress?: (avatar: Avatar) => void; timeoutMs?: number },
): Promise<Avatar>;

export interface ConnectOptions {
  onConnectionStateChange?: (state: RTCPeerConnectionState) => void;
  /** "relay": TURN relay candidates only (fails with "turn-refused" / "turn-unreachable"). */
  iceTransportPolicy?: RTCIceTransportPolicy;
}

/** Connect: a mic session sends `micStream`; a push session receives only. */
export declare function connect(
  session: Session,
  micStream?: MediaStream,
  options?: ConnectOptions,
): Promise<{ pc: RTCPeerConnection; videoStream: MediaStream }>;

export declare function close(session: Session): Promise<void>;
export declare function openMicrophone(): Promise<MediaStream>;
export declare function toPcm16(samples: Samples): Int16Array;
export declare function readiness(
  baseUrl: string,
): Promise<{ ready: boolean; status: number; body: Record<string, unknown> }>;
export declare function readMetrics(baseUrl: string): Promise<Map<string, number>>;
export declare function parsePrometheus(text: string): Map<string, number>;
