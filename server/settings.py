"""The server's settings: one typed ``Settings`` object, filled from a profile, env and flags.

Owns ``Settings`` (every field documented; env prefix ``HEADCAST_``), ``load_settings`` which
layers a YAML profile (``configs/*.yaml``) < environment variables < command-line overrides,
and ``SettingsError``, raised with the offending key or value named. Reads files and the
environment only when ``load_settings`` / ``Settings()`` is called, never at import.

Knows nothing about the app, sessions or engines beyond their names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from headcast.pipeline.engine_options import NO_GUIDANCE, OmniSizeName
from headcast.pipeline.media import CHUNK_SECONDS, DEFAULT_HEIGHT, DEFAULT_WIDTH, MS_PER_S
from headcast.server.capacity import check_sessions_within_slots
from headcast.streaming.push import (
    DEFAULT_PUSH_MAX_FRAME_BYTES,
    DEFAULT_PUSH_MAX_QUEUED_S,
    PCM16_BYTES,
)
from headcast.streaming.session_config import DEFAULT_SPEECH_WAIT_MAX_S
from headcast.streaming.turn_check import TURN_URL_SCHEMES

EngineName = Literal["puppet", "tiny", "flashtalk", "omniavatar"]
IdleModeName = Literal["generate", "loop"]
VideoCodecName = Literal["vp8", "h264"]
LogLevel = Literal["debug", "info", "warning", "error"]

ENV_PREFIX = "HEADCAST_"
"""Prefix of the environment variables that set fields (``HEADCAST_PORT`` sets ``port``)."""

DEFAULT_PORT = 8000
DEFAULT_OMNI_STEPS = 4
"""Sampling steps per segment of the ``omniavatar`` engine (the official recipe has 50)."""
DEFAULT_MAX_SESSIONS_FALLBACK = 4
"""Concurrent sessions when the engine measures no RTF: what the puppet sustains on 2 cores."""

DEFAULT_SESSION_TOKEN_TTL_S = 60.0
DEFAULT_NO_SHOW_TIMEOUT_S = 30.0
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_MAX_DURATION_S = 3600.0
DEFAULT_PEER_TIMEOUT_S = 8.0
DEFAULT_CONNECT_TIMEOUT_S = 20.0
DEFAULT_MEDIA_THREADS = 8
DEFAULT_MAX_REQUEST_BYTES = 16_384
DEFAULT_MAX_OFFER_BYTES = 262_144
DEFAULT_HTTP_BODY_TIMEOUT_S = 10.0
DEFAULT_HTTP_HEADER_TIMEOUT_S = 10.0
DEFAULT_HTTP_KEEP_ALIVE_S = 5
DEFAULT_MAX_AUDIO_SOCKETS = 2
DEFAULT_GROUP_RESTARTS = 2
"""Restarts of an engine group whose worker died before it stays failed."""
MAX_SPEECH_WAIT_S = 60.0
"""Upper bound of ``speech_wait_max_s``: speech held longer than this is stale."""

DEFAULT_AVATAR_STORE_DIR = Path("data/avatars")
"""Where avatars are kept: relative to the server's working directory."""
DEFAULT_AVATAR_MAX_BYTES = 10_000_000
DEFAULT_AVATAR_MAX_PIXELS = 50_000_000
"""Pixels of the largest photo decoded (a 48 MP phone photo is 48,000,000)."""
PIL_BOMB_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold: the pixel limit stays under it."""
DEFAULT_AVATAR_MAX_COUNT = 100
DEFAULT_AVATAR_UPLOAD_TIMEOUT_S = 120.0

MIN_API_KEY_CHARS = 16
"""Shortest API key accepted: shorter keys are guessable."""

SECRET_FIELDS = frozenset({"api_keys", "turn_secret"})
"""Fields whose values never appear in error messages or logs."""

LIST_SEPARATOR = ","
"""Separates the items of a list setting given as one string (``HEADCAST_API_KEYS=a,b``)."""

CORS_ANY_ORIGIN = "*"

MIN_TURN_SECRET_CHARS = 16
"""Shortest TURN shared secret accepted: shorter ones are guessable."""


def _split_list(value: object) -> object:
    """``"a, b"`` -> ``["a", "b"]`` (env variables); lists pass through (YAML, code)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(LIST_SEPARATOR) if item.strip()]
    return value


class SettingsError(ValueError):
    """A profile, variable or flag holds an unknown key or a bad value; the message says which."""


class IceServer(BaseModel):
    """A STUN or TURN server handed to clients and used by the server's peer connections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str]
    """``stun:host:port`` or ``turn:host:port?transport=udp`` URLs."""

    username: str | None = None
    """TURN user name."""

    credential: str | None = None
    """TURN password."""

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Settings(BaseSettings):
    """Everything ``headcast serve`` can be told. Env variables: ``HEADCAST_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Interface the HTTP server listens on (``0.0.0.0`` for every interface)."""

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    """TCP port of the HTTP server."""

    engine: EngineName = "puppet"
    """Which engine makes the frames: ``puppet`` (CPU stand-in, no weights), ``tiny`` (the
    model's code with tiny random weights), ``flashtalk`` (the real model, GPU) or
    ``omniavatar`` (OmniAvatar streaming one 41-frame segment per chunk: higher quality,
    slower; see the ``omni_*`` settings)."""

    model_dir: Path | None = None
    """Model directory: the FlashTalk checkpoint (``flashtalk``), or for ``omniavatar`` the
    folder holding its Wan2.1-T2V, OmniAvatar and wav2vec2-base-960h folders."""

    wav2vec_dir: Path | None = None
    """wav2vec 2.0 audio-encoder directory (``flashtalk``; ``omniavatar`` when it is not in
    ``model_dir``)."""

    omni_size: OmniSizeName = "1.3b"
    """Model size of the ``omniavatar`` engine: ``tiny`` (tiny random weights on the CPU, no
    ``model_dir``: the pictures are noise), ``1.3b`` or ``14b``."""

    omni_steps: int = Field(DEFAULT_OMNI_STEPS, ge=1)
    """Sampling steps per segment (per 1.12 s chunk) of the ``omniavatar`` engine."""

    omni_guidance: float = Field(NO_GUIDANCE, ge=NO_GUIDANCE)
    """Guidance scale of the ``omniavatar`` engine: 1 runs one DiT pass per step (no
    guidance); above 1, two passes (prompt and audio guidance) batched into one forward,
    about twice the DiT work."""

    omni_tiled_vae: bool = False
    """``omniavatar``: run the VAE in the official blended tiles (true) or on whole frames
    (false: about a third of the VAE time per chunk; pixels differ near the tile seams)."""

    steps: Literal[4, 2] | None = None
    """Sampling steps per chunk of the diffusion engines (``tiny``, ``flashtalk``); unset: the
    preset's 4. 2 halves the DiT time (the official 2-step schedule)."""

    gen_height: int | None = Field(None, gt=0, multiple_of=16)
    """Height the ``flashtalk`` and ``omniavatar`` engines generate at, when it differs from
    ``height`` (frames are resized to the output size); unset: the output height
    (``omniavatar``: its bucket closest to the output's aspect ratio, 720x400 portrait)."""

    gen_width: int | None = Field(None, gt=0, multiple_of=16)
    """Width the ``flashtalk`` and ``omniavatar`` engines generate at; unset: the output width
    (``omniavatar``: see ``gen_height``)."""

    quantize: Literal["none", "fp8", "int8", "int4", "nf4"] = "none"
    """DiT linear layers of the ``flashtalk`` engine: ``none`` (bf16), ``fp8`` (Hopper, row-wise
    scales), ``int8``/``int4`` (optimum-quanto, weight only) or ``nf4`` (bitsandbytes). See
    BENCHMARKS.md for speed, memory and error of each. ``omniavatar``: ``none`` or ``fp8``."""

    compile: bool = False
    """``torch.compile`` the DiT blocks of the ``flashtalk`` and ``omniavatar`` engines (the
    first chunk pays the compile time at warm-up; not with int8/int4/nf4)."""

    attention_fp8: bool = False
    """Self-attention of the ``flashtalk`` and ``omniavatar`` engines' DiT in fp8 through
    cuDNN's fused kernel (Hopper, the ``nvidia-cudnn-frontend`` package of the ``gpu``
    extra): about 1.3-1.4x faster attention, and about 6 % error in each attention output
    against bf16 (BENCHMARKS.md section 7). A server whose GPU cannot run it stops at start-up
    and says why."""

    random_weights: bool = False
    """Build the ``flashtalk`` (or ``omniavatar``) engine's full-size model with random weights
    on the GPU instead of loading ``model_dir``: the real model's speed, memory and capacity
    before the checkpoint is there; the pictures are noise. The log, ``/readyz`` and the demo
    page say so."""

    speedups: Literal["fast", "official"] = "fast"
    """``fast``: every speed-up that keeps bf16 results (cuDNN attention, channels-last VAE with
    fused norms, cuDNN autotune); ``official``: run exactly as the official code does."""

    avatar_cache_dir: Path | None = None
    """Folder where the diffusion engines keep each avatar's conditioning (T5, CLIP and VAE
    outputs) across restarts; unset: kept in memory only."""

    height: int = Field(DEFAULT_HEIGHT, gt=0, multiple_of=16)
    """Output video height in pixels."""

    width: int = Field(DEFAULT_WIDTH, gt=0, multiple_of=16)
    """Output video width in pixels."""

    gpus: Annotated[list[int] | None, NoDecode] = None
    """Device indexes the engine groups use: CUDA device numbers as torch counts them (after
    ``CUDA_VISIBLE_DEVICES``); comma-separated in the environment (``HEADCAST_GPUS=0,1``).
    Unset: every visible GPU for ``tiny`` and ``flashtalk``; the puppet, and any engine on a
    host without CUDA, runs as one engine inside the server process. Where there is no CUDA
    (or for the puppet) the indexes are CPU worker slots: one worker process per index, so
    engine groups can be run and tested on any machine."""

    gpus_per_session: int = Field(1, ge=1)
    """Devices that compute one session's chunks together: the size N of an engine group.
    The server starts ``len(gpus) // gpus_per_session`` groups, each with its own chunk loop
    and session slots; with N > 1 each chunk is split across the group's N worker processes
    (sequence parallelism over NCCL). 1: one group per GPU, the most sessions per host."""

    group_restarts: int = Field(DEFAULT_GROUP_RESTARTS, ge=0)
    """Times an engine group is restarted after one of its worker processes died (its
    sessions end with an ``engine_failed`` error event either way); after that the group
    stays ``failed`` in ``/readyz`` and the other groups go on."""

    max_sessions: int | None = Field(None, ge=1)
    """Connected sessions each engine group serves at once (one group unless ``gpus`` makes
    several); the server's limit is the sum over its ready groups, and further session
    requests get 429 with Retry-After. Unset: the group's ``generation_slots``. In
    ``idle_mode: generate`` every session generates all the time, so this is at most
    ``generation_slots`` (and, when only this is set, it sets them: the slots are what it
    always meant); in ``loop`` it may exceed them (docs/idle.md says how far)."""

    max_sessions_fallback: int = Field(DEFAULT_MAX_SESSIONS_FALLBACK, ge=1)
    """Generation slots of each engine group when neither ``generation_slots`` nor (in
    ``generate`` mode) ``max_sessions`` is set and the engine measures no real-time factor
    (the puppet)."""

    idle_mode: IdleModeName = "generate"
    """What a silent session costs. ``generate``: every 1.12 s chunk goes through the engine,
    silence included (natural idle motion, a whole generation slot per session, always).
    ``loop``: a silent session plays its latest rest chunk as a loop and takes no engine
    time; when it speaks it takes a free generation slot (or waits for one) and the engine
    re-seeds from the frames on screen. docs/idle.md compares the two."""

    generation_slots: int | None = Field(None, ge=1)
    """Chunks each engine group generates in real time at once: how many sessions may speak
    (``loop``) or be connected (``generate``) at the same time. Unset: ``floor(1 / RTF)`` of
    the group's warm-up real-time factor (at least 1), or ``max_sessions`` in ``generate``
    mode when that is set; engines that measure no RTF (the puppet) get
    ``max_sessions_fallback``."""

    speech_wait_max_s: float = Field(DEFAULT_SPEECH_WAIT_MAX_S, gt=0, le=MAX_SPEECH_WAIT_S)
    """``loop`` mode: the longest a session's speech waits for a free generation slot, in
    seconds; past it the speech is dropped and the session gets an ``error`` event
    (``speech_wait_timeout``). Waits show in ``speech.started`` (``wait_ms``) and in
    ``headcast_speech_wait_seconds``."""

    session_token_ttl_s: float = Field(DEFAULT_SESSION_TOKEN_TTL_S, gt=0)
    """Seconds a session token can start its session (the WebRTC offer or the audio
    WebSocket). Once connected, the token still deletes and controls the session until it
    ends. A session not connected by then is released."""

    no_show_timeout_s: float = Field(DEFAULT_NO_SHOW_TIMEOUT_S, gt=0)
    """Seconds a new session waits for its client to connect (WebRTC offer or audio
    WebSocket) before it is released (or until its token expires, if sooner)."""

    idle_timeout_s: float = Field(DEFAULT_IDLE_TIMEOUT_S, gt=0)
    """Seconds a connected session may go without client activity (audio, a command, a
    keep-alive) before it is released."""

    max_duration_s: float = Field(DEFAULT_MAX_DURATION_S, gt=0)
    """Longest life of a session in seconds, from its creation; then it is released."""

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """API keys that may create sessions (``Authorization: Bearer <key>`` on
    ``POST /v1/sessions``); comma-separated in the environment, at least 16 characters
    each. Empty: open local-demo mode, anyone who reaches the server can create sessions
    (the server logs a warning)."""

    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Browser origins (``https://app.example.com``) allowed to call the API from another
    site; comma-separated in the environment; ``*`` allows any. Empty: same origin only."""

    ice_servers: list[IceServer] = Field(default_factory=list)
    """STUN/TURN servers for clients and the server (empty: host candidates only)."""

    turn_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """TURN server URLs (``turn:turn.example.com:3478?transport=udp``,
    ``turns:turn.example.com:5349?transport=tcp``; comma-separated in the environment) that
    every session gets with credentials minted for it from ``turn_secret``, valid for the
    session's longest life (``max_duration_s``). The server's own peer uses them too."""

    turn_secret: SecretStr | None = None
    """Shared secret of the TURN server (coturn ``use-auth-secret`` with
    ``static-auth-secret``), at least 16 characters; needed with ``turn_urls``."""

    ice_relay_only: bool = False
    """The server's peer uses relay (TURN) candidates only, like a browser's
    ``iceTransportPolicy: "relay"``: its own addresses stay hidden, and a deployment can be
    checked to work through the TURN server alone. Needs ``turn_urls`` or a TURN server in
    ``ice_servers``."""

    ice_loopback: bool = False
    """Also offer 127.0.0.1 as an ICE candidate (needed on a loopback-only host; only a
    client on this machine can use it)."""

    ice_loopback_only: bool = False
    """Offer only 127.0.0.1 (tests and single-machine demos; implies ``ice_loopback``)."""

    avatar_image: FilePath | None = None
    """Picture of the ``default`` avatar (RGB image file); unset: the drawn default face."""

    avatar_store_dir: Path = DEFAULT_AVATAR_STORE_DIR
    """Folder of the avatars added through ``POST /v1/avatars``: each one's photo, framed
    picture, the engine's conditioning and metadata (created with the first avatar; a
    relative path is relative to the server's working directory). Avatars survive restarts:
    a prepared avatar is not prepared again."""

    avatar_max_bytes: int = Field(DEFAULT_AVATAR_MAX_BYTES, ge=1_024, le=100_000_000)
    """Largest upload ``POST /v1/avatars`` takes (the photo and its form fields), in bytes; a
    larger one gets 413, from its ``Content-Length`` before a byte is read, or as soon as it
    crosses the limit."""

    avatar_max_pixels: int = Field(DEFAULT_AVATAR_MAX_PIXELS, ge=65_536, le=PIL_BOMB_PIXELS)
    """Most pixels (width x height) of an avatar photo; more gets 413, from the file's header,
    before anything is decoded (decompression bombs)."""

    avatar_max_count: int = Field(DEFAULT_AVATAR_MAX_COUNT, ge=1, le=100_000)
    """Avatars the server keeps (besides ``default``); one more gets 409 until one is deleted.
    With the ``flashtalk`` engine each takes about 20 MB of disk."""

    avatar_upload_timeout_s: float = Field(DEFAULT_AVATAR_UPLOAD_TIMEOUT_S, gt=0, le=3600)
    """Seconds a client has to send an avatar photo once its headers arrived (a slow uplink
    needs 80 s for 10 MB at 1 Mbit/s); a photo still incomplete then gets 408."""

    video_codec: VideoCodecName = "vp8"
    """Preferred video codec: ``vp8`` (about 9 % of a core per stream in aiortc) or
    ``h264`` (about 26 %)."""

    latency_budget_s: float = Field(CHUNK_SECONDS, gt=0.3)
    """Seconds from taking a chunk's audio to playing it out: the engine's compute time for
    one chunk (for every session sharing the device) must fit in it."""

    peer_timeout_s: float = Field(DEFAULT_PEER_TIMEOUT_S, gt=0)
    """A connected client silent (no RTCP receiver report) this long is released."""

    connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    """A client must complete ICE and DTLS within this many seconds of the answer."""

    media_threads: int = Field(DEFAULT_MEDIA_THREADS, ge=2)
    """Worker threads for frame conversion and encoding (started with the server)."""

    log_level: LogLevel = "info"
    """Log level of the server's loggers."""

    @field_validator("api_keys", "cors_allow_origins", "gpus", "turn_urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("gpus")
    @classmethod
    def _devices(cls, gpus: list[int] | None) -> list[int] | None:
        if gpus is None:
            return None
        if not gpus:
            raise ValueError(
                "list at least one device index (e.g. [0, 1]), or leave gpus unset to use "
                "every visible GPU"
            )
        if any(index < 0 for index in gpus):
            raise ValueError("device indexes start at 0; remove the negative ones")
        repeated = sorted({index for index in gpus if gpus.count(index) > 1})
        if repeated:
            raise ValueError(
                f"device(s) {repeated} listed twice: each device belongs to one group only"
            )
        return gpus

    @model_validator(mode="after")
    def _sessions_within_slots(self) -> Settings:
        check_sessions_within_slots(
            self.max_sessions, self.generation_slots, loop=self.idle_mode == "loop"
        )
        return self

    @model_validator(mode="after")
    def _whole_groups(self) -> Settings:
        size = self.gpus_per_session
        if self.gpus is not None and len(self.gpus) % size:
            count = len(self.gpus)
            raise ValueError(
                f"gpus lists {count} device(s) but gpus_per_session is {size}: "
                f"{count % size} device(s) would sit idle; list a multiple of {size} devices "
                f"or set gpus_per_session to a divisor of {count}"
            )
        return self

    @model_validator(mode="after")
    def _omniavatar_fits(self) -> Settings:
        if self.engine != "omniavatar":
            return self
        # The settings -> options mapping lives in server.engines, which imports this module.
        from headcast.server.engines import engine_options

        engine_options(self)  # OmniAvatarOptions raises ValueError naming every bad option
        return self

    @field_validator("api_keys")
    @classmethod
    def _long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for number, key in enumerate(keys, start=1):
            if len(key.get_secret_value()) < MIN_API_KEY_CHARS:
                raise ValueError(
                    f"API key #{number} is shorter than {MIN_API_KEY_CHARS} characters; generate "
                    "one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            if LIST_SEPARATOR in key.get_secret_value():
                raise ValueError(f"API key #{number} contains {LIST_SEPARATOR!r}")
        return keys

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == CORS_ANY_ORIGIN:
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port] with no path or "
                    f"trailing slash (e.g. https://app.example.com), or {CORS_ANY_ORIGIN!r}"
                )
        return origins

    @field_validator("turn_urls")
    @classmethod
    def _turn_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(TURN_URL_SCHEMES):
                raise ValueError(
                    f"{url!r} is not a TURN URL: write turn:HOST:PORT?transport=udp or "
                    "turns:HOST:5349?transport=tcp (STUN servers go in ice_servers)"
                )
        return urls

    @field_validator("turn_secret")
    @classmethod
    def _turn_secret_long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < MIN_TURN_SECRET_CHARS:
            raise ValueError(
                f"turn_secret is shorter than {MIN_TURN_SECRET_CHARS} characters; generate one "
                "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return secret

    @property
    def offers_loopback(self) -> bool:
        """True when 127.0.0.1 is offered as an ICE candidate."""
        return self.ice_loopback or self.ice_loopback_only

    # -- chatbot mode (pushed audio over the WebSocket) --------------------------------------

    push_max_queued_ms: int = Field(
        round(DEFAULT_PUSH_MAX_QUEUED_S * MS_PER_S), ge=round(CHUNK_SECONDS * MS_PER_S), le=600_000
    )
    """Pushed audio allowed to wait before binary frames are refused with
    ``audio_buffer_full``, in milliseconds (at least one 1.12 s chunk)."""

    push_max_frame_bytes: int = Field(DEFAULT_PUSH_MAX_FRAME_BYTES, ge=PCM16_BYTES, le=4_000_000)
    """Longest binary frame accepted on the audio WebSocket, in bytes (192,000 = 2 s at
    48 kHz); longer frames are refused with ``frame_too_large``."""

    # -- what one client may send (docs/deployment.md) ---------------------------------------

    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1_024, le=16_777_216)
    """Largest HTTP request body accepted, in bytes, on every route without a limit of its own
    (session creation, commands); larger bodies get 413, from the ``Content-Length`` before a
    byte is read, or as soon as a chunked body crosses it."""

    max_offer_bytes: int = Field(DEFAULT_MAX_OFFER_BYTES, ge=16_384, le=16_777_216)
    """Largest body of ``POST /v1/sessions/{id}/offer`` (the SDP offer as JSON), in bytes;
    larger: 413. Real offers are a few kB."""

    http_body_timeout_s: float = Field(DEFAULT_HTTP_BODY_TIMEOUT_S, gt=0, le=300)
    """Seconds a client has to send a JSON request body once its headers arrived (a body
    still incomplete then gets 408), and to finish sending a body the server answered
    without reading it (a 401, a 413: the rest is dropped; then the connection is closed)."""

    http_header_timeout_s: float = Field(DEFAULT_HTTP_HEADER_TIMEOUT_S, gt=0, le=300)
    """Seconds a client has to send a request's line and headers, from the moment it connects
    or first sends on a kept-alive connection; a connection that sends nothing, or half a
    request, is closed then."""

    http_keep_alive_s: int = Field(DEFAULT_HTTP_KEEP_ALIVE_S, ge=1, le=300)
    """Seconds an idle kept-alive HTTP connection stays open after a response."""

    max_audio_sockets: int = Field(DEFAULT_MAX_AUDIO_SOCKETS, ge=1, le=16)
    """Audio WebSockets one push session may have open at once (2: a reconnect while the old
    socket is not yet closed); one more is refused (``too_many_sockets``, close code 4409)
    until one closes."""


def _read_profile(path: Path) -> dict[str, Any]:
    """Read a YAML profile; unknown keys are an error naming the key and the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read the config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"{path} must be a mapping of setting: value, got {type(data).__name__}"
        )
    known = set(Settings.model_fields)
    for key in data:
        if key not in known:
            raise SettingsError(
                f"{path}: unknown setting {key!r}; known settings are: {', '.join(sorted(known))}"
            )
    return data


def _check_turn(settings: Settings) -> None:
    """TURN settings that only make sense together (checked once profile, env and flags are
    merged, since each may hold one of them)."""
    if bool(settings.turn_urls) != (settings.turn_secret is not None):
        raise SettingsError(
            "turn_urls and turn_secret go together: set both (per-session TURN credentials) "
            "or neither (fixed credentials can go in ice_servers)"
        )
    has_turn = bool(settings.turn_urls) or any(
        url.startswith(TURN_URL_SCHEMES) for server in settings.ice_servers for url in server.urls
    )
    if settings.ice_relay_only and not has_turn:
        raise SettingsError(
            "ice_relay_only needs a TURN server: set turn_urls and turn_secret, or put a "
            "turn: URL in ice_servers"
        )


def _describe(error: ValidationError, origin: str, *, from_env: bool = False) -> str:
    lines = [f"invalid settings ({origin}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        secret = bool(item["loc"]) and item["loc"][0] in SECRET_FIELDS
        if from_env:
            where = ENV_PREFIX + where.split(".")[0].upper()
        got = "" if secret else f" (got {item.get('input')!r})"
        lines.append(f"  {where}: {item['msg']}{got}")
    return "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build ``Settings``: ``config_file`` (YAML) < ``HEADCAST_*`` env < ``overrides``.

    ``overrides`` whose value is ``None`` are ignored (an unset command-line flag).
    Raises ``SettingsError`` naming any unknown key or bad value.
    """
    profile = _read_profile(config_file) if config_file is not None else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    for key in given:
        if key not in Settings.model_fields:
            raise SettingsError(f"unknown setting {key!r} given on the command line")
    try:
        from_env = Settings()
    except ValidationError as exc:
        # from None: the ValidationError's own text would repeat secret inputs (API keys)
        raise SettingsError(_describe(exc, "environment variables", from_env=True)) from None
    env_values = from_env.model_dump(include=from_env.model_fields_set)
    try:
        settings = Settings(**{**profile, **env_values, **given})
    except ValidationError as exc:
        origin = f"{config_file}, environment and flags" if config_file else "environment and flags"
        raise SettingsError(_describe(exc, origin)) from None
    _check_turn(settings)
    return settings
