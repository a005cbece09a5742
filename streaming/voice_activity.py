"""Where speech starts and ends in a microphone session's audio: an energy detector.

Owns ``VoiceActivity``. A push session knows its utterances from the application
(``streaming.push.UtteranceLedger``); a mic session only has the caller's audio, so this
detector finds utterances in it, 40 ms frame by frame, as each chunk's audio is taken:
speech starts at the first of ``START_FRAMES`` consecutive frames above ``START_DBFS``
and ends after the last frame above ``END_DBFS`` once ``HANGOVER_FRAMES`` quieter frames
follow it (pauses between words do not end an utterance). It returns ``SpeechMark``\\ s on
the media timeline, so ``speech.started`` / ``speech.ended`` are published when the avatar
plays those frames, exactly as for pushed audio.

Pure numpy; knows nothing about sessions, tracks or transports.
"""

from __future__ import annotations

import numpy as np

from headcast.pipeline.media import SAMPLES_PER_FRAME, frame_levels_dbfs
from headcast.streaming.push import SpeechMark

START_DBFS = -40.0
"""A 40 ms frame at least this loud (RMS) can start speech: a voice at a normal distance
from a microphone is about -30 to -20 dBFS; room noise is usually below -50."""

END_DBFS = -45.0
"""A frame below this counts as quiet for the end of speech (a little under the start level,
so a voice hovering at the threshold does not flap)."""

START_FRAMES = 2
"""Consecutive loud frames (80 ms) needed to start speech: a click or a cough's first burst
alone does not."""

HANGOVER_FRAMES = 12
"""Quiet frames (480 ms) after the last loud one before speech ends."""


class VoiceActivity:
    """Finds utterances in consecutive chunks of one session's audio."""

    def __init__(self) -> None:
        self._loud_run = 0
        """Loud frames in a row just before the current one, while not speaking."""
        self._start: int | None = None
        """Media sample where the utterance now open started (None: no speech)."""
        self._last_loud_end = 0
        """Media sample just after the open utterance's last loud frame."""
        self._quiet_run = 0
        """Quiet frames since the open utterance's last loud frame."""

    @property
    def speaking(self) -> bool:
        """True while an utterance is open."""
        return self._start is not None

    def reset(self) -> None:
        """Forget any open utterance (an interrupt): the next speech starts a new one."""
        self._loud_run = 0
        self._start = None
        self._quiet_run = 0

    def on_take(self, first_sample: int, audio: np.ndarray) -> list[SpeechMark]:
        """The audio of one taken chunk, starting at media sample ``first_sample``; returns
        the utterance boundaries inside it, in order."""
        marks: list[SpeechMark] = []
        for number, level in enumerate(frame_levels_dbfs(audio)):
            frame_start = first_sample + number * SAMPLES_PER_FRAME
            if self._start is None:
                self._loud_run = self._loud_run + 1 if level >= START_DBFS else 0
                if self._loud_run >= START_FRAMES:
                    start = frame_start - (START_FRAMES - 1) * SAMPLES_PER_FRAME
                    self._start = start
                    self._last_loud_end = frame_start + SAMPLES_PER_FRAME
                    self._quiet_run = 0
                    self._loud_run = 0
                    marks.append(SpeechMark(started=True, media_sample=start, start_sample=start))
                continue
            if level >= END_DBFS:
                self._last_loud_end = frame_start + SAMPLES_PER_FRAME
                self._quiet_run = 0
                continue
            self._quiet_run += 1
            if self._quiet_run >= HANGOVER_FRAMES:
                marks.append(
                    SpeechMark(
                        started=False, media_sample=self._last_loud_end, start_sample=self._start
                    )
                )
                self._start = None
                self._quiet_run = 0
        return marks
