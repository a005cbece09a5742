"""The official OmniAvatar code, timed at its own settings: the baseline of issue 15.

Builds the official model classes of Omni-Avatar/OmniAvatar (``WanModel`` with the audio
pack and projections, peft's LoRA injected by the official ``add_lora_to_model``,
``WanTextEncoder`` (umT5-XXL), ``WanVideoVAE``, ``Wav2VecModel``) with random weights,
wires them into the official ``WanVideoPipeline`` with its VRAM management (weights moved
between host and GPU around every stage, as ``scripts/inference.py`` sets it up), and runs
what the official ``WanInferencePipeline.forward`` runs for one later segment at the
settings of the official ``configs/inference.yaml`` (read with the official ``parse_args``):
``log_video`` (prompt encoding, the DiT steps with two guidance passes per step, the two
tiled decodes, the fixed-latent overwrite) and the re-encode of the 13 overlap frames.
``log_video`` runs with ``--warmup-steps + --timed-steps`` steps, each step timed with CUDA
events through its progress-bar argument; everything in the segment that is not a step is
timed once. The 60 s projection uses the same helpers and formulas as
``python -m headcast.pipeline.omniavatar.bench`` and prints the same table row.

The official code is not part of this repository: pass a checkout of it with ``--official``
(benchmarks/README.md says how it travels to the device). Modules the official code
imports but never calls on this path (``xfuser`` with one GPU, ``librosa``, ``soundfile``,
``ftfy`` for the tokenizer's text cleaning, ``torchvision``'s transforms) are replaced by
stubs that raise when called, and only where they are not installed. The umT5 tokenizer is
not available offline: a stand-in gives the encoder the same 512 token ids' shape.

    python benchmarks/omniavatar_official.py --size 14b --official .official/OmniAvatar \\
        --label official-14b --json /tmp/official.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import logging
import math
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headcast.pipeline.bench import device_name
from headcast.pipeline.media import SAMPLE_RATE_HZ, VIDEO_FPS
from headcast.pipeline.omniavatar.audio import clip_frames, segment_count
from headcast.pipeline.omniavatar.bench import (
    BF16_PEAK_TFLOPS,
    GIB,
    TABLE_HEADER,
    TERA,
    OmniBenchReport,
    count_flops,
    recipe_facts,
)
from headcast.pipeline.omniavatar.config import SIZES, OmniSize, omni_size
from headcast.pipeline.omniavatar.recipe import TINY_BUCKETS, TINY_MAX_TOKENS, Recipe
from headcast.pipeline.timing import StageTimer, stage_timer

logger = logging.getLogger("omniavatar_official")

PROG = "python benchmarks/omniavatar_official.py"
DEFAULT_OFFICIAL = Path(".official/OmniAvatar")
CONFIGS = {"14b": "configs/inference.yaml", "1.3b": "configs/inference_1.3B.yaml", "tiny": ""}
"""The official config of each size (tiny: the 1.3B one with the tiny overrides below)."""

CHECKPOINT_CONFIG: dict[str, Any] = {
    "model_config": {"in_dim": 33, "audio_hidden_size": 32},
    "train_architecture": "lora",
    "lora_rank": 128,
    "lora_alpha": 64,
    "lora_target_modules": "q,k,v,o,ffn.0,ffn.2",
    "init_lora_weights": "kaiming",
    "use_audio": True,
    "i2v": True,
    "random_prefix_frames": True,
}
"""What the checkpoint's ``config.json`` adds to the official args (``reload_cfg: True``);
the values of ../shared/reference/omniavatar/README.md (the file is not in the repository)."""

OFFICIAL_AUDIO_FEATURES = 10752
"""``audio_input_dim`` that the official ``WanModel`` hard-codes (14 x 768)."""

PROMPT = "A person is talking to the camera, natural expressions and lip movements."
STUBBED_MODULES = ("xfuser", "librosa", "soundfile", "ftfy", "torchvision")
"""Imported by the official code, never called on the timed path; stubbed only if missing."""


# -- loading the official code -------------------------------------------------------------


class _NotAvailable:
    """A stub attribute: importable, raises when used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError(f"{self._name} is a stub in this benchmark (not installed here)")

    def __getattr__(self, attr: str) -> _NotAvailable:
        return _NotAvailable(f"{self._name}.{attr}")


class _StubModule(types.ModuleType):
    """A module whose every attribute is a ``_NotAvailable``."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _NotAvailable(f"{self.__name__}.{attr}")


def install_stubs(names: Iterable[str] = STUBBED_MODULES) -> list[str]:
    """Register stub packages for the ``names`` that cannot be imported; returns those."""
    stubbed = []
    for name in names:
        if importlib.util.find_spec(name) is not None:
            continue
        stubbed.append(name)
        submodules = {
            "xfuser": ("xfuser.core", "xfuser.core.distributed"),
            "torchvision": ("torchvision.transforms",),
        }.get(name, ())
        for module_name in (name, *submodules):
            module = _StubModule(module_name)
            module.__path__ = []
            sys.modules[module_name] = module
    return stubbed


def load_official(root: Path, config: str) -> types.ModuleType:
    """Import the official ``scripts/inference.py`` (it parses ``--config`` at import, as when
    it is run) and add the checkpoint's ``config.json`` values to its args."""
    script = root / "scripts" / "inference.py"
    if not script.is_file():
        raise SystemExit(f"no official checkout at {root} (expected {script})")
    sys.path.insert(0, str(root.resolve()))
    spec = importlib.util.spec_from_file_location("omniavatar_official_inference", script)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    saved_argv = sys.argv
    sys.argv = [str(script), "--config", str(root / config)]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # parse_args prints its args
            spec.loader.exec_module(module)
    finally:
        sys.argv = saved_argv
    args = module.args
    for key, value in CHECKPOINT_CONFIG.items():  # as the official reload(): only unset ones
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return module


def _official_module(name: str) -> Any:
    """A module of the official package (importable once ``load_official`` has run)."""
    return importlib.import_module(name)


# -- building the official models with random weights --------------------------------------


def _build(factory: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``factory()`` with its parameters created (and initialised) on ``device`` in ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = factory()
    finally:
        torch.set_default_dtype(previous)
    return module.to(dtype).eval().requires_grad_(False)


class StandInTokenizer:
    """The official ``HuggingfaceTokenizer`` call (``ids, mask`` padded to ``seq_len``) with
    word-hash ids: the umT5 tokenizer files are not here, and the encoder's cost depends on
    the padded length only."""

    def __init__(self, seq_len: int, vocab: int) -> None:
        self.seq_len = seq_len
        self.vocab = vocab

    def __call__(
        self, sequence: str | list[str], **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [sequence] if isinstance(sequence, str) else sequence
        ids = torch.zeros(len(texts), self.seq_len, dtype=torch.long)  # [B, text_len]
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            words = [2 + sum(map(ord, w)) % (self.vocab - 2) for w in text.split()]
            words = [*words[: self.seq_len - 1], 1]  # EOS 1, PAD 0
            ids[row, : len(words)] = torch.tensor(words)
            mask[row, : len(words)] = 1
        return ids, mask


def build_pipeline(
    official: types.ModuleType, size: OmniSize, device: torch.device
) -> tuple[Any, dict[str, Any]]:
    """The official ``WanVideoPipeline`` with random weights, LoRA and VRAM management as
    ``WanInferencePipeline.load_model`` leaves it; returns it and what was built."""
    dit_module = _official_module("OmniAvatar.models.wan_video_dit")
    WanModel, precompute_freqs_cis_3d = dit_module.WanModel, dit_module.precompute_freqs_cis_3d
    WanTextEncoder = _official_module("OmniAvatar.models.wan_video_text_encoder").WanTextEncoder
    vae_module = _official_module("OmniAvatar.models.wan_video_vae")
    VideoVAE_, WanVideoVAE = vae_module.VideoVAE_, vae_module.WanVideoVAE
    WanVideoPipeline = _official_module("OmniAvatar.wan_video").WanVideoPipeline

    args = official.args
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype, torch.float32)
    host = torch.device("cpu")
    cfg = size.dit
    dit_kwargs = dict(
        dim=cfg.dim,
        ffn_dim=cfg.ffn_dim,
        freq_dim=cfg.freq_dim,
        text_dim=cfg.text_dim,
        out_dim=cfg.out_dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        eps=cfg.eps,
        patch_size=list(cfg.patch_size),
        has_image_input=False,
        **args.model_config,
    )
    # initialised on the device (fast), LoRA injected as the official add_lora_to_model does
    # it (no LoRA file: peft's own init), then on the host where the official ModelManager
    # loads every model; VRAM management moves it to the GPU for each segment's steps
    dit = _build(lambda: WanModel(**dit_kwargs), device, dtype)
    official.WanInferencePipeline.add_lora_to_model(
        types.SimpleNamespace(),  # the method only stores lora_alpha on it
        dit,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_target_modules=args.lora_target_modules,
        init_lora_weights=args.init_lora_weights,
        pretrained_lora_path=None,
    )
    dit = dit.to(host)
    dit.freqs = precompute_freqs_cis_3d(cfg.dim // cfg.num_heads)  # host, as in the official
    t5 = size.t5
    text_encoder = _build(
        lambda: WanTextEncoder(
            vocab=t5.vocab,
            dim=t5.dim,
            dim_attn=t5.dim_attn,
            dim_ffn=t5.dim_ffn,
            num_heads=t5.num_heads,
            num_layers=t5.num_layers,
            num_buckets=t5.num_buckets,
        ),
        device,
        dtype,
    ).to(host)
    vae = WanVideoVAE(z_dim=size.vae.z_dim)
    if size.vae.dim != vae.model.dim:
        vae.model = VideoVAE_(dim=size.vae.dim, z_dim=size.vae.z_dim).eval().requires_grad_(False)
    vae = vae.to(dtype=dtype)

    pipe = WanVideoPipeline(device=str(device), torch_dtype=dtype)
    pipe.dit, pipe.vae, pipe.text_encoder = dit, vae, text_encoder
    pipe.prompter.fetch_models(text_encoder)
    pipe.prompter.tokenizer = StandInTokenizer(pipe.prompter.text_len, t5.vocab)
    pipe.requires_grad_(False)
    pipe.eval()
    # every model stays on the host until a stage loads it: the state the previous segment
    # leaves behind (its last call offloads everything)
    pipe.enable_vram_management(num_persistent_param_in_dit=args.num_persistent_param_in_dit)
    lora_dtypes = {str(p.dtype) for n, p in dit.named_parameters() if "lora_" in n}
    built = {
        "lora_dtypes": sorted(lora_dtypes),
        "dit_parameters": sum(p.numel() for p in dit.parameters()),
        "lora_parameters": sum(p.numel() for n, p in dit.named_parameters() if "lora_" in n),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
    }
    return pipe, built


# -- the timed segment ---------------------------------------------------------------------


class _Marks:
    """Wraps pipeline methods so that each call is one named stage of a ``StageTimer``."""

    def __init__(self, timer: StageTimer) -> None:
        self.timer = timer

    def wrap(self, owner: Any, method: str, stage: str) -> None:
        inner = getattr(owner, method)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.timer.mark("other")
            result = inner(*args, **kwargs)
            self.timer.mark(stage)
            return result

        setattr(owner, method, timed)

    def steps(self, timesteps: Iterable[torch.Tensor], **kwargs: object) -> Iterator[torch.Tensor]:
        """``progress_bar_cmd`` of ``log_video``: a stage per sampling step."""
        index = -1
        for index, timestep in enumerate(timesteps):
            self.timer.mark("other" if index == 0 else f"step{index - 1}")
            yield timestep
        self.timer.mark(f"step{index}")


def _official_inputs(
    official: types.ModuleType, recipe: Recipe, bucket: tuple[int, int], device: torch.device
) -> dict[str, Any]:
    """A later segment's ``log_video`` inputs, built as ``WanInferencePipeline.forward``
    builds them (random latents and audio features in place of real ones)."""
    args = official.args
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    frames = recipe.segment_frames(bucket)
    latent_frames = recipe.latent_frames(bucket)
    prefix = recipe.overlap_latents  # (3 + fixed_frame) // 4
    generator = torch.Generator(device=device).manual_seed(args.seed)
    shape = (1, 16, latent_frames, bucket[0] // 8, bucket[1] // 8)
    img_lat = torch.randn(shape[:2] + (1,) + shape[3:], generator=generator, device=device)
    image_cat = img_lat.repeat(1, 1, latent_frames, 1, 1).to(dtype)  # [1, 16, T, h, w]
    mask = torch.ones_like(image_cat[:, :1])
    mask[:, :, :prefix] = 0  # later segments: the overlap latents are fixed too
    overlap = torch.randn(shape[:2] + (prefix,) + shape[3:], generator=generator, device=device)
    rest = torch.zeros(*shape[:2], latent_frames - prefix, *shape[3:], device=device)
    lat = torch.cat([overlap, rest], 2)  # [1, 16, T, h, w]: the overlap's latents, then zeros
    audio = torch.randn(1, frames, OFFICIAL_AUDIO_FEATURES, generator=generator, device=device)
    return {
        "lat": lat.to(device=device, dtype=dtype),
        "fixed_frame": prefix,
        "image_emb": {"y": torch.cat([image_cat, mask], dim=1)},  # [1, 17, T, h, w]
        "audio_emb": {"audio_emb": audio.to(dtype)},  # [1, L, 10752]
    }


@torch.no_grad()
def time_segment(
    official: types.ModuleType,
    pipe: Any,
    recipe: Recipe,
    bucket: tuple[int, int],
    device: torch.device,
    steps: int,
) -> dict[str, Any]:
    """Run one later segment as the official loop does, with ``steps`` sampling steps."""
    args = official.args
    inputs = _official_inputs(official, recipe, bucket, device)
    timer = stage_timer(device)
    marks = _Marks(timer)
    for method, stage in (
        ("encode_prompt", "prompt"),
        ("load_models_to_device", "load"),
        ("decode_video", "decode"),
    ):
        marks.wrap(pipe, method, stage)
    guidance = args.guidance_scale
    audio_guidance = args.audio_scale if args.audio_scale is not None else guidance
    forwards = [0]
    hook = pipe.dit.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    timer.start()
    frames, _, _ = pipe.log_video(
        inputs["lat"],
        PROMPT,
        inputs["fixed_frame"],
        inputs["image_emb"],
        inputs["audio_emb"],
        args.negative_prompt,
        num_inference_steps=steps,
        cfg_scale=guidance,
        audio_cfg_scale=audio_guidance,
        return_latent=True,
        tea_cache_l1_thresh=args.tea_cache_l1_thresh,
        tea_cache_model_id="Wan2.1-T2V-14B",
        progress_bar_cmd=marks.steps,
    )
    timer.mark("other")
    hook.remove()
    # WanInferencePipeline.forward, after log_video: the overlap frames re-encoded
    image = (frames[:, -recipe.overlap :].clip(0, 1) * 2 - 1).permute(0, 2, 1, 3, 4).contiguous()
    pipe.load_models_to_device(["vae"])
    img_lat = pipe.encode_video(image.to(dtype=pipe.torch_dtype)).to(pipe.device)
    timer.mark("encode")
    pipe.load_models_to_device([])  # the next log_video's first call offloads it anyway
    stages = timer.read()
    step_times = [stages.pop(f"step{index}") for index in range(steps)]
    passes = 2 if audio_guidance == guidance else 3
    if forwards[0] != steps * passes:
        raise RuntimeError(f"log_video ran {forwards[0]} DiT forwards, not {steps} x {passes}")
    return {
        "step_times_s": step_times,
        "stages_s": stages,
        "guided_passes": passes,
        "dit_forwards": forwards[0],
        "encoded_latents": list(img_lat.shape),
    }


@torch.no_grad()
def time_audio(
    official: types.ModuleType,
    size: OmniSize,
    video_s: float,
    silence_s: float,
    device: torch.device,
) -> float:
    """wav2vec2 on the whole clip as ``WanInferencePipeline.forward`` runs it (feature
    extractor, ``Wav2VecModel`` with hidden states, the concatenation)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    Wav2VecModel = _official_module("OmniAvatar.models.wav2vec").Wav2VecModel

    # eager attention: the official forward sets ``config.output_attentions``, which
    # transformers refuses under its default SDPA attention
    settings: dict[str, Any] = {**dict(size.wav2vec or {}), "attn_implementation": "eager"}
    config = Wav2Vec2Config(**settings)
    model = Wav2VecModel(config).to(device).eval()
    extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]  # untyped upstream
        do_normalize=True, return_attention_mask=False
    )
    samples = round((video_s + silence_s) * SAMPLE_RATE_HZ)
    audio = np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1
    timer = stage_timer(device)
    timer.start()
    values = np.squeeze(extractor(audio, sampling_rate=SAMPLE_RATE_HZ).input_values)
    input_values = torch.from_numpy(values).float().to(device=device).unsqueeze(0)
    audio_len = math.ceil(input_values.shape[1] / SAMPLE_RATE_HZ * VIDEO_FPS)
    hidden = model(input_values, seq_len=audio_len, output_hidden_states=True)
    embeddings = hidden.last_hidden_state  # [1, frames, 768]
    # transformers 5 no longer hands the official encoder call its hidden states (the
    # layers still run); then only this concatenation, a copy of 14 x 768 per frame, is left out
    for layer in hidden.hidden_states or ():
        embeddings = torch.cat((embeddings, layer), -1)  # [1, frames, 768 * (1 + layers)]
    timer.mark("audio")
    if hidden.hidden_states is None:
        logger.warning("wav2vec2 returned no hidden states here: concatenation not timed")
    return timer.read()["audio"]


# -- the report ----------------------------------------------------------------------------


def official_recipe(official: types.ModuleType, size: OmniSize) -> tuple[Recipe, tuple[int, int]]:
    """The official args as a ``Recipe`` and the 400 x 720 bucket (tiny: the tiny bucket)."""
    args = official.args
    recipe = Recipe(
        steps=args.num_steps,
        guidance=args.guidance_scale,
        audio_guidance=args.audio_scale,
        teacache=args.tea_cache_l1_thresh or 0.0,
        max_tokens=args.max_tokens,
        overlap=args.overlap_frame,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        silence_s=args.silence_duration_s,
        name="official",
        trade="the official code at its own settings (eager, one forward per pass, "
        "VRAM management, tiled VAE decoded twice per segment)",
    )
    bucket = tuple(getattr(args, f"image_sizes_{args.max_hw}")[0])
    if size.is_random:
        recipe = recipe.with_overrides(buckets=TINY_BUCKETS, max_tokens=TINY_MAX_TOKENS)
        bucket = TINY_BUCKETS[0]
    return recipe, (int(bucket[0]), int(bucket[1]))


def project(
    recipe: Recipe,
    bucket: tuple[int, int],
    size: OmniSize,
    timing: dict[str, Any],
    audio_s: float,
    video_s: float,
    warmup_steps: int,
) -> dict[str, Any]:
    """The segment and 60 s figures, with ``pipeline.omniavatar.bench``'s formulas."""
    stages = timing["stages_s"]
    step_s = statistics.median(timing["step_times_s"][warmup_steps:])
    steps_s = recipe.steps * step_s
    per_segment_s = stages["prompt"] + stages["load"] + stages["decode"] + stages["other"]
    segment_s = steps_s + per_segment_s + stages["encode"]
    first_segment_s = steps_s + per_segment_s
    frames = recipe.segment_frames(bucket)
    new_frames = frames - recipe.overlap
    audio_frames = clip_frames(
        round(video_s * SAMPLE_RATE_HZ) + round(recipe.silence_s * SAMPLE_RATE_HZ)
    )
    segments = segment_count(audio_frames, frames, recipe.overlap)
    flops = count_flops(size, recipe, bucket, timing["guided_passes"])
    floor_segment = (
        recipe.steps * flops["dit_step_flops"]
        + flops["vae_decode_flops"]
        + flops["vae_encode_flops"]
    ) / (BF16_PEAK_TFLOPS * TERA)
    per_video_s = segment_s * VIDEO_FPS / new_frames
    return {
        "step_s": step_s,
        "decode_s": stages["decode"],
        "encode_s": stages["encode"],
        "segment_s": segment_s,
        "first_segment_s": first_segment_s,
        "frames": frames,
        "new_frames": new_frames,
        "segments": segments,
        "compute_per_video_s": per_video_s,
        "video_compute_s": first_segment_s + (segments - 1) * segment_s + audio_s,
        "flops": flops,
        "floor_per_video_s": floor_segment * VIDEO_FPS / new_frames,
        "achieved_tflops": flops["dit_step_flops"] / step_s / TERA,
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def attention_path() -> str:
    """Which attention the official ``flash_attention`` takes here."""
    dit = _official_module("OmniAvatar.models.wan_video_dit")

    for flag, name in (
        ("FLASH_ATTN_3_AVAILABLE", "flash-attn 3"),
        ("FLASH_ATTN_2_AVAILABLE", "flash-attn 2"),
        ("SAGE_ATTN_AVAILABLE", "sageattention"),
    ):
        if getattr(dit, flag):
            return name
    return "F.scaled_dot_product_attention (PyTorch's choice; no flash-attn, no sageattention)"


def run(args: argparse.Namespace) -> OmniBenchReport:
    """Build, time one segment and the clip's audio, and return the report."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = omni_size(args.size)
    stubbed = install_stubs()
    official = load_official(args.official, CONFIGS[size.name] or CONFIGS["1.3b"])
    torch.manual_seed(official.args.seed)  # set_seed(42), as main() does
    recipe, bucket = official_recipe(official, size)
    started = time.perf_counter()
    pipe, built = build_pipeline(official, size, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    load_s = time.perf_counter() - started
    logger.info("official %s built in %.1f s: %s; stubs: %s", size.name, load_s, built, stubbed)
    steps = args.warmup_steps + args.timed_steps
    started = time.perf_counter()
    timing = time_segment(official, pipe, recipe, bucket, device, steps)
    segment_wall_s = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    try:
        audio_s = time_audio(official, size, args.video_seconds, recipe.silence_s, device)
    except Exception:  # the transformers here may differ from the official 4.52; say so
        logger.exception("the official wav2vec2 path failed: audio time counted as 0")
        audio_s = 0.0
    figures = project(recipe, bucket, size, timing, audio_s, args.video_seconds, args.warmup_steps)
    logger.info(
        "segment with %d steps: %.1f s wall; stages %s; steps %s",
        steps,
        segment_wall_s,
        timing["stages_s"],
        timing["step_times_s"],
    )
    commit_file = args.official / "COMMIT"
    commit = commit_file.read_text().strip() if commit_file.is_file() else "unknown"
    report = OmniBenchReport(
        label=args.label,
        command=args.command_line,
        date=datetime.date.today().isoformat(),
        device=device_name(device),
        torch=torch.__version__,
        size=size.name,
        weights=f"random (official classes, Omni-Avatar/OmniAvatar@{commit[:7]})",
        recipe=recipe_facts(recipe),
        trade=recipe.trade,
        options={
            "code": f"Omni-Avatar/OmniAvatar@{commit}",
            "attention": attention_path(),
            "vram_management": True,
            "dtype": official.args.dtype,
            "peft": _version("peft"),
            "transformers": _version("transformers"),
            "stubbed_modules": stubbed,
            "built": built,
            "segment_stages_s": timing["stages_s"],
            "step_times_s": timing["step_times_s"],
            "segment_wall_s": segment_wall_s,
        },
        batch_passes=False,
        bucket=bucket,
        segment_frames=figures["frames"],
        new_frames=figures["new_frames"],
        tokens=recipe.latent_frames(bucket) * (bucket[0] // 16) * (bucket[1] // 16),
        passes=timing["guided_passes"],
        steps=recipe.steps,
        teacache_computed_steps=recipe.steps,
        load_s=load_s,
        warmup_s=sum(timing["step_times_s"][: args.warmup_steps]),
        step_s=figures["step_s"],
        skipped_step_s=0.0,
        decode_s=figures["decode_s"],
        encode_s=figures["encode_s"],
        audio_s=audio_s,
        segment_s=figures["segment_s"],
        first_segment_s=figures["first_segment_s"],
        compute_per_video_s=figures["compute_per_video_s"],
        step_per_video_s=figures["compute_per_video_s"] / recipe.steps,
        video_s=args.video_seconds,
        video_segments=figures["segments"],
        video_compute_s=figures["video_compute_s"],
        flops=figures["flops"],
        floor_per_video_s=figures["floor_per_video_s"],
        achieved_tflops=figures["achieved_tflops"],
        peak_memory_gib=peak,
        check={},
    )
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="14b")
    parser.add_argument(
        "--official",
        type=Path,
        default=DEFAULT_OFFICIAL,
        help="checkout of Omni-Avatar/OmniAvatar (with a COMMIT file)",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--timed-steps", type=int, default=2)
    parser.add_argument("--video-seconds", type=float, default=60.0)
    parser.add_argument("--label", default="official")
    parser.add_argument("--json", type=Path, default=None, help="append the JSON line here")
    args = parser.parse_args(argv)
    if args.warmup_steps < 0 or args.timed_steps < 1:
        parser.error("--warmup-steps must be >= 0 and --timed-steps >= 1")
    args.command_line = " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    report = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as out:
            out.write(json.dumps(asdict(report)) + "\n")
    sys.stdout.write(TABLE_HEADER + report.row() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
