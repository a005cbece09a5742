"""A session's speech input: where its audio comes from, what waits, and where utterances land.

Owns ``SpeechInput``: the audio source, fixed when the session is made -- the caller's WebRTC
microphone (``mic``) or audio the application pushes (``push``, chatbot TTS: PCM16 frames
through a ``PushDecoder``, bounded, with an ``UtteranceLedger``) -- the ``AudioIntake`` both
fill, the 17,920 samples each chunk takes (``take``), and the utterance boundaries those
takes place on the media timeline (from the ledger, or from ``VoiceActivity`` for a mic).
It publishes ``speech.started`` (with how long the utterance waited for a generation slot)
/ ``speech.ended`` when the playout reports those media times played (``played_until``), and says
how much of the utterance playing was heard when an interrupt cuts it (``cut``).

Knows nothing about chunk jobs, engines, tracks, conversion or transports: the scheduler
calls ``take``, the playout's frame reports reach ``played_until`` through the session.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from headcast.pipeline.media import CHUNK_SAMPLES, MS_PER_S, SAMPLE_RATE_HZ
from headcast.streaming.audio_in import AudioIntake, receive_track
from headcast.streaming.events import ErrorCode, EventBus, ProtocolError, SpeechEnded, SpeechStarted
from headcast.streaming.idle import is_rest_audio
from headcast.streaming.observer import SessionObserver
from headcast.streaming.push import PushDecoder, PushFormat, SpeechMark, UtteranceLedger
from headcast.streaming.session_config import AudioSource, SessionConfig
from headcast.streaming.voice_activity import VoiceActivity

logger = logging.getLogger(__name__)


class SpeechInput:
    """One session's incoming speech, from either source, up to the chunks taken from it."""

    def __init__(
        self,
        config: SessionConfig,
        events: EventBus,
        observer: SessionObserver,
        *,
        audio_source: AudioSource = AudioSource.MIC,
        push_format: PushFormat | None = None,
        label: str = "session",
    ) -> None:
        if audio_source is AudioSource.MIC and push_format is not None:
            raise ValueError("push_format is for push sessions; this one's source is the mic")
        self.audio_source = audio_source
        self.push_format: PushFormat | None = None
        if audio_source is AudioSource.PUSH:
            self.push_format = push_format or PushFormat()
        self._label = label
        self._events = events
        self._observer = observer
        self._decoder: PushDecoder | None = None
        self._ledger: UtteranceLedger | None = None
        if self.push_format is None:
            self.intake = AudioIntake(round(config.mic_buffer_s * SAMPLE_RATE_HZ))
        else:
            self._decoder = PushDecoder(self.push_format)
            self._ledger = UtteranceLedger()
            # Never drop pushed audio silently: the push bound refuses frames before this fills.
            self.intake = AudioIntake(self.push_format.max_queued_samples + CHUNK_SAMPLES)
        self._voice = VoiceActivity()
        """Finds utterances in a mic session's audio (push sessions have their ledger)."""
        self._marks: deque[SpeechMark] = deque()
        """Utterance boundaries placed on the media timeline, not yet played."""
        self._speaking_from: int | None = None
        """Media sample where the utterance now playing started (None: none is playing)."""

    @property
    def queued_ms(self) -> int:
        """Received audio waiting to be taken into a chunk, in milliseconds."""
        return round(self.intake.buffered * MS_PER_S / SAMPLE_RATE_HZ)

    # -- audio in -------------------------------------------------------------------------------

    def push_pcm16(self, data: bytes) -> int:
        """Queue one binary frame of PCM16 mono little-endian at the push sample rate.

        Returns the milliseconds of audio now queued. Raises ``ProtocolError`` (the frame is
        dropped whole) for odd-length or oversized frames and when the queue bound would be
        passed (``audio_buffer_full``: wait until ``queued_ms`` falls, then resend).
        """
        decoder, ledger = self._push_parts()
        self._observer.on_activity()
        decoder.check(data)
        self._check_room(decoder.format.samples_at_16k(len(data)))
        self._queue_pushed(decoder.decode(data), ledger)
        return self.queued_ms

    def push_audio(self, pcm: np.ndarray) -> None:
        """Queue ``[n]`` float32 samples in [-1, 1] at 16 kHz: within the bound and the
        utterance of a push session; mixed into the intake as is in a mic session."""
        if self.audio_source is AudioSource.MIC:
            self.intake.push(pcm)
            return
        _decoder, ledger = self._push_parts()
        self._check_room(pcm.size)
        self._queue_pushed(pcm, ledger)

    def end_of_speech(self) -> None:
        """End the pushed utterance: the partial chunk is padded with silence and played."""
        decoder, ledger = self._push_parts()
        self._observer.on_activity()
        self._queue_pushed(decoder.flush(), ledger)
        ledger.end()

    async def read_track(self, track: MediaStreamTrack) -> None:
        """Read a WebRTC audio track until it ends: into the intake for a mic session, and
        dropped in a push session (so aiortc's receive queue does not grow)."""
        if self.audio_source is AudioSource.MIC:
            await receive_track(track, self.intake, on_activity=self._observer.on_activity)
            return
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return

    def _push_parts(self) -> tuple[PushDecoder, UtteranceLedger]:
        if self._decoder is None or self._ledger is None:
            raise ProtocolError(
                ErrorCode.NOT_PUSH_SESSION,
                f"{self._label} takes its audio from the WebRTC microphone; create the session "
                'with "audio_source": "push" to push audio',
            )
        return self._decoder, self._ledger

    def _check_room(self, incoming: int) -> None:
        assert self.push_format is not None
        bound = self.push_format.max_queued_samples
        if self.intake.buffered + incoming > bound:
            raise ProtocolError(
                ErrorCode.AUDIO_BUFFER_FULL,
                f"{self.queued_ms} ms of audio already queued and the bound is "
                f"{round(bound * MS_PER_S / SAMPLE_RATE_HZ)} ms; this frame was dropped whole: "
                "resend it once queued_ms has fallen (audio plays in real time)",
            )

    def _queue_pushed(self, samples: np.ndarray, ledger: UtteranceLedger) -> None:
        self.intake.push(samples)
        ledger.pushed_samples(samples.size)
        self._observer.on_audio_queued(self.intake.buffered / SAMPLE_RATE_HZ)

    # -- chunks out -----------------------------------------------------------------------------

    def pending_speech(self) -> bool:
        """True if the samples the next ``take`` would take hold speech (any 40 ms frame
        above the rest level), without taking them."""
        ledger = self._ledger
        count = CHUNK_SAMPLES if ledger is None else ledger.take_limit(self.intake.buffered)
        audio = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        audio[:count] = self.intake.peek(count)
        return not is_rest_audio(audio)

    def utterance_open(self) -> bool:
        """True while an utterance is under way: being pushed (no ``audio.end`` yet) or, for
        a microphone, still voiced."""
        if self._ledger is not None:
            return self._ledger.in_utterance
        return self._voice.speaking

    def more_speech(self) -> bool:
        """True while more speech is expected: an open utterance, or queued speech."""
        return self.utterance_open() or self.pending_speech()

    def take(self, index: int, *, wait_ms: int = 0) -> tuple[np.ndarray, int]:
        """Chunk ``index``'s 17,920 samples and how many of them are received audio; places
        the utterance boundaries they carry on the media timeline (a start with
        ``wait_ms``: how long the speech waited for a generation slot)."""
        ledger = self._ledger
        if ledger is None:  # the microphone: whatever arrived, padded with silence
            audio, received = self.intake.take(CHUNK_SAMPLES)
            marks = self._voice.on_take(index * CHUNK_SAMPLES, audio)
        else:
            limit = ledger.take_limit(self.intake.buffered)
            part, received = self.intake.take(limit)
            audio = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
            audio[:limit] = part
            marks = ledger.on_take(index, received)
        if wait_ms:
            marks = [replace(m, wait_ms=wait_ms) if m.started else m for m in marks]
        self._marks.extend(marks)
        return audio, received

    def played_until(self, end_sample: int) -> None:
        """Media before ``end_sample`` was played: announce the boundaries in it."""
        while self._marks and self._marks[0].media_sample < end_sample:
            self._play(self._marks.popleft())

    def clear(self) -> None:
        """Drop the audio not taken yet and any open utterance (an interrupt, or speech
        dropped after waiting too long for a generation slot)."""
        self.intake.clear()
        self._voice.reset()
        if self._ledger is not None and self._decoder is not None:
            self._ledger.clear()
            self._decoder.reset()

    def cut(self, cut_sample: int) -> int:
        """An interrupt cut the media at ``cut_sample``: announce the boundaries played before
        it, forget the rest; returns how many ms of the utterance playing were heard."""
        self.played_until(cut_sample)
        self._marks.clear()
        played_ms = 0
        if self._speaking_from is not None:
            played_ms = round((cut_sample - self._speaking_from) * MS_PER_S / SAMPLE_RATE_HZ)
            self._speaking_from = None
        return max(played_ms, 0)

    def _play(self, mark: SpeechMark) -> None:
        if mark.started:
            self._speaking_from = mark.media_sample
            self._events.publish(SpeechStarted(wait_ms=mark.wait_ms))
        else:
            self._speaking_from = None
            self._events.publish(SpeechEnded(duration_ms=mark.duration_ms))
