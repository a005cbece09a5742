"""``headcast bench --engine omniavatar`` on the tiny size, and its FLOP floor.

Timings are only checked to be measured and consistent with each other (segment = steps +
decode + encode; per second of video = segment x 25 / new frames); the FLOP count of a
full-size step is checked against its closed form (video-token GEMMs + attention).
``--gpus N`` is checked in its arguments and its FLOP floor only: a run on 2 gloo ranks
works (``python -m headcast.pipeline.omniavatar.bench --size tiny --case fast --gpus 2``)
but takes about 10 s on 2 cores, most of it two processes importing torch and
transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headcast.pipeline.media import CHUNK_FRAMES, VIDEO_FPS
from headcast.pipeline.omniavatar.bench import cases, count_flops, floor_segment_s
from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.recipe import (
    FAST_1_3B,
    STREAM_OVERLAP,
    STREAM_SEGMENT_FRAMES,
    max_tokens_for,
)
from headcast.server.cli import main

CLOSED_FORM_TOL = 0.02
"""The counted FLOPs may exceed the closed form by norms, RoPE, embeddings and the head."""


def test_a_full_size_step_counts_its_gemms_and_attention() -> None:
    size = omni_size("1.3b")
    bucket = (400, 720)
    flops = count_flops(size, FAST_1_3B, bucket, passes=2)
    cfg = size.dit
    tokens = FAST_1_3B.latent_frames(bucket) * (bucket[0] // 16) * (bucket[1] // 16)  # 14 x 25 x 45
    video_token_weights = cfg.num_layers * (
        6 * cfg.dim * cfg.dim + 2 * cfg.dim * cfg.ffn_dim
    )  # q k v o, q o, ffn
    attention = cfg.num_layers * 4 * tokens * tokens * cfg.dim
    closed = 2 * (2 * video_token_weights * tokens + attention)
    assert flops["dit_step_flops"] == pytest.approx(closed, rel=CLOSED_FORM_TOL)
    assert flops["vae_decode_flops"] > 0 and flops["vae_encode_flops"] > 0


def test_streaming_cases_make_the_flashtalk_chunk() -> None:
    assert STREAM_SEGMENT_FRAMES - STREAM_OVERLAP == CHUNK_FRAMES
    size = omni_size("1.3b")
    stream = [r for r in cases(size, ["stream"], steps=None, stream_steps=4)]
    assert [r.name for r in stream] == ["stream-1pass", "stream-batched"]
    assert all(r.segment_frames(r.buckets[0]) == STREAM_SEGMENT_FRAMES for r in stream)
    assert [len(r.sampler_options().guidance.passes) for r in stream] == [1, 2]
    assert max_tokens_for(41, (400, 720)) == 11_532


def test_each_case_keeps_its_vae_tiling_unless_the_flag_says() -> None:
    size = omni_size("1.3b")
    every = ["official", "fast", "stream"]
    own = cases(size, every, steps=None, stream_steps=4)
    assert [(r.name, r.tiled_vae) for r in own] == [
        ("official", True),
        ("fast-1.3b", False),
        ("stream-1pass", False),
        ("stream-batched", False),
    ]
    for tiled in (True, False):
        forced = cases(size, every, steps=None, stream_steps=4, tiled_vae=tiled)
        assert [r.tiled_vae for r in forced] == [tiled] * 4


def test_bench_on_tiny_reports_consistent_timings(tmp_path: Path) -> None:
    report_path = tmp_path / "omni.jsonl"
    status = main(
        [
            "bench",
            "--engine",
            "omniavatar",
            "--size",
            "tiny",
            "--case",
            "fast",
            "--timed-steps",
            "1",
            "--warmup-steps",
            "0",
            "--video-seconds",
            "2",
            "--self-check",
            "--json",
            str(report_path),
        ]
    )
    assert status == 0
    (report,) = [json.loads(line) for line in report_path.read_text().splitlines()]
    assert report["label"] == "omniavatar-fast-1.3b" and report["size"] == "tiny"
    assert report["gpus"] == 1
    assert report["step_s"] > 0 and report["decode_s"] > 0 and report["encode_s"] > 0
    steps_s = (
        report["teacache_computed_steps"] * report["step_s"]
        + (report["steps"] - report["teacache_computed_steps"]) * report["skipped_step_s"]
    )
    assert report["segment_s"] == pytest.approx(steps_s + report["decode_s"] + report["encode_s"])
    assert report["compute_per_video_s"] == pytest.approx(
        report["segment_s"] * VIDEO_FPS / report["new_frames"]
    )
    assert report["new_frames"] == report["segment_frames"] - 5  # the 1.3B fast overlap
    assert report["recipe"]["tiled_vae"] is False  # the fast preset's whole-frame VAE
    assert (
        report["flops"]["dit_step_flops"] > 0 and report["passes"] == 2 and report["batch_passes"]
    )
    assert "omniavatar" in report["command"] and "--case fast" in report["command"]
    assert (
        report["check"]["guided_velocity_rel_err_vs_eager"] < 1e-5
    )  # float32: batching changes nothing


def test_the_floor_splits_the_dit_over_the_gpus_and_not_the_vae() -> None:
    flops = {"dit_step_flops": 8e14, "vae_decode_flops": 3e14, "vae_encode_flops": 1e14}
    one, two = floor_segment_s(flops, 2, 1), floor_segment_s(flops, 2, 2)
    assert one == pytest.approx(two * (16 + 4) / (8 + 4))  # DiT 16 -> 8, VAE 4 on each


BAD_GROUPS = {
    "no CUDA": (0, ["--gpus", "2", "--device", "cuda"], "0 visible: use --gpus 1 or a CPU"),
    "too few GPUs": (1, ["--gpus", "2", "--device", "cuda"], "1 visible: use --gpus 1 or fewer"),
    "FlashTalk's check": (2, ["--check-parallel"], "--check-parallel belongs to the FlashTalk"),
}
"""case -> (CUDA devices faked, flags, what the error says)."""


@pytest.mark.parametrize("case", list(BAD_GROUPS))
def test_bad_group_flags_stop_with_what_to_pass(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    devices, flags, expected = BAD_GROUPS[case]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    with pytest.raises(SystemExit, match=expected):
        main(["bench", "--engine", "omniavatar", "--size", "tiny", "--case", "fast", *flags])
