"""Loading OmniAvatar's DiT from the Wan base shards plus ``pytorch_model.pt``.

Owns: the official folder layout under one model folder (``Wan2.1-T2V-14B/`` with the base
DiT shards, VAE, umT5 and tokenizer; ``OmniAvatar-14B/`` with ``pytorch_model.pt`` and
``config.json``; ``wav2vec2-base-960h/``; the 1.3B names likewise), the LoRA settings read
from the checkpoint's ``config.json``, and ``build_omni_dit``: a checkpoint state (base
keys, OmniAvatar keys, LoRA pairs; the goldens' format) materialised block by block on the
device with each block's LoRA merged and an optional per-block preparation (quantisation)
before the next block exists, so the load peak stays near the final size.

As the official loader does, OmniAvatar's tensors override the base ones (the 33-channel
patch embedding); every model tensor must come from one of the two files, and every LoRA
target must have its pair. Knows nothing about sampling.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from headcast.pipeline.checkpoint import (
    CheckpointError,
    read_safetensors_state,
    read_torch_state,
    sharded_safetensors_files,
)
from headcast.pipeline.dit import WEIGHTS_STEM
from headcast.pipeline.omniavatar.config import LoraConfig, OmniDiTConfig, OmniSize
from headcast.pipeline.omniavatar.dit import FLOAT32_SUBMODULES, OmniAvatarDiT
from headcast.pipeline.omniavatar.lora import (
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    checkpoint_shapes,
    lora_targets,
    merge_lora_into,
    split_lora,
)

logger = logging.getLogger(__name__)

OMNI_WEIGHTS_FILE = "pytorch_model.pt"
"""OmniAvatar's own tensors (LoRA, audio pack and projections, 33-channel patch embedding)."""

OMNI_ONLY_PREFIXES = ("patch_embedding.", "audio_proj.", "audio_cond_projs.")
"""Tensors ``pytorch_model.pt`` supplies besides the LoRA pairs (the patch embedding
overrides the base's 16-channel one)."""

BASE_LATENT_CHANNELS = 16
"""Input channels of the Wan T2V base's patch embedding (the noisy latent only)."""

OMNI_CONFIG_FILE = "config.json"
"""OmniAvatar's training config (LoRA rank/alpha/targets), next to ``pytorch_model.pt``."""

MAX_NAMED = 5
"""Tensor names quoted in an error before the rest are counted."""

BlockHook = Callable[[nn.Module], None]
"""Runs on each block right after its weights are in place (fusion, quantisation)."""


@dataclass(frozen=True)
class OmniFolders:
    """Where one size's files are under a model folder (the official ``pretrained_models``)."""

    base: Path
    omni: Path
    wav2vec: Path

    @classmethod
    def under(
        cls, model_dir: Path, size: OmniSize, *, wav2vec_dir: Path | None = None
    ) -> OmniFolders:
        """The official names under ``model_dir``; ``wav2vec_dir`` replaces the wav2vec2 one."""
        model_dir = Path(model_dir)
        wav2vec = Path(wav2vec_dir) if wav2vec_dir is not None else model_dir / size.wav2vec_dir
        return cls(model_dir / size.base_dir, model_dir / size.omni_dir, wav2vec)


def _names(items: list[str]) -> str:
    more = f" (+{len(items) - MAX_NAMED} more)" if len(items) > MAX_NAMED else ""
    return ", ".join(items[:MAX_NAMED]) + more


def read_lora_config(omni_dir: Path, default: LoraConfig) -> LoraConfig:
    """The LoRA settings of ``omni_dir/config.json`` (``lora_rank``, ``lora_alpha``,
    ``lora_target_modules``); ``default`` where the file or a key is absent."""
    path = Path(omni_dir) / OMNI_CONFIG_FILE
    if not path.is_file():
        logger.warning(
            "%s not found: assuming LoRA rank %d, alpha %g", path, default.rank, default.alpha
        )
        return default
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read OmniAvatar config {path}: {exc}") from exc
    targets = data.get("lora_target_modules")
    return LoraConfig(
        rank=int(data.get("lora_rank", default.rank)),
        alpha=float(data.get("lora_alpha", default.alpha)),
        targets=tuple(targets.split(",")) if isinstance(targets, str) else default.targets,
    )


def expected_tensors(
    config: OmniDiTConfig, lora: LoraConfig
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(Wan base shards, ``pytorch_model.pt``) tensor names -> shapes for a DiT config,
    from the model built on the meta device."""
    with torch.device("meta"):
        model = OmniAvatarDiT(config)
    shapes = checkpoint_shapes(model, lora)
    omni = {
        name: shape
        for name, shape in shapes.items()
        if name.endswith((LORA_A_SUFFIX, LORA_B_SUFFIX)) or name.startswith(OMNI_ONLY_PREFIXES)
    }
    base = {
        name: shape
        for name, shape in shapes.items()
        if name not in omni or name.startswith("patch_embedding.")
    }
    weight = base["patch_embedding.weight"]
    base["patch_embedding.weight"] = (weight[0], BASE_LATENT_CHANNELS, *weight[2:])
    return base, omni


def _sub_state(
    state: Mapping[str, torch.Tensor], prefix: str, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Tensors under ``prefix`` (prefix removed), on ``device``; floating ones as ``dtype``."""
    return {
        key[len(prefix) :]: value.to(
            device=device, dtype=dtype if value.is_floating_point() else None
        )
        for key, value in state.items()
        if key.startswith(prefix)
    }


def _check_keys(
    model: OmniAvatarDiT,
    base: Mapping[str, torch.Tensor],
    lora_names: set[str],
    lora: LoraConfig,
    what: str,
) -> None:
    expected = set(model.state_dict())
    missing = sorted(expected - set(base))
    targets = set(lora_targets(model, lora))
    missing_lora = sorted(targets - lora_names)
    stray_lora = sorted(lora_names - targets)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors: {_names(missing)}")
    if missing_lora:
        problems.append(f"{len(missing_lora)} LoRA targets without A/B: {_names(missing_lora)}")
    if stray_lora:
        problems.append(f"{len(stray_lora)} LoRA pairs for no target: {_names(stray_lora)}")
    if problems:
        raise CheckpointError(
            f"{what} does not fit OmniAvatar ({'; '.join(problems)}). Run `headcast doctor "
            "--engine omniavatar --model-dir DIR` to compare the files with the expected tensors."
        )
    unexpected = sorted(set(base) - expected)
    if unexpected:  # the official loader (strict=False) ignores them too
        logger.warning(
            "%s: ignoring %d tensors the model has no place for: %s",
            what,
            len(unexpected),
            _names(unexpected),
        )


@torch.no_grad()
def build_omni_dit(
    config: OmniDiTConfig,
    lora: LoraConfig,
    state: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    prepare_block: BlockHook | None = None,
    what: str = "OmniAvatar checkpoint",
) -> OmniAvatarDiT:
    """A DiT from a checkpoint state (base + OmniAvatar + LoRA keys), LoRA merged.

    Built on the meta device, filled child by child and block by block on ``device``.
    Floating weights become ``dtype``; the timestep MLPs and the head are then kept in
    float32 (``FLOAT32_SUBMODULES``). Raises ``CheckpointError`` naming what is missing.
    """
    device = torch.device(device)
    base, pairs = split_lora(state)
    with torch.device("meta"):
        model = OmniAvatarDiT(config)
    _check_keys(model, base, set(pairs), lora, what)
    for name, child in model.named_children():
        if name != "blocks":
            child.load_state_dict(
                _sub_state(base, f"{name}.", device, dtype), strict=True, assign=True
            )
    for name in FLOAT32_SUBMODULES:
        getattr(model, name).float()
    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}."
        block_state = _sub_state(base, prefix, device, dtype)
        block_pairs = {
            key[len(prefix) :]: pair for key, pair in pairs.items() if key.startswith(prefix)
        }
        merge_lora_into(block_state, block_pairs, lora.scaling, dtype)
        block.load_state_dict(block_state, strict=True, assign=True)
        if prepare_block is not None:
            prepare_block(block)
    return model.eval().requires_grad_(False)


def read_omni_checkpoint(folders: OmniFolders) -> dict[str, torch.Tensor]:
    """The Wan base shards and ``pytorch_model.pt`` as one state (OmniAvatar's tensors win)."""
    shards = sharded_safetensors_files(folders.base, WEIGHTS_STEM)
    state = read_safetensors_state(shards, "Wan 2.1 T2V DiT weights")
    state.update(read_torch_state(folders.omni / OMNI_WEIGHTS_FILE, "OmniAvatar weights"))
    return state


def load_omni_dit(
    folders: OmniFolders,
    size: OmniSize,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    prepare_block: BlockHook | None = None,
) -> OmniAvatarDiT:
    """The official DiT of ``size`` from its folders, LoRA merged, on ``device``."""
    lora = read_lora_config(folders.omni, size.lora)
    model = build_omni_dit(
        size.dit,
        lora,
        read_omni_checkpoint(folders),
        device=device,
        dtype=dtype,
        prepare_block=prepare_block,
        what=f"OmniAvatar {size.name} checkpoint in {folders.base} + {folders.omni}",
    )
    logger.info(
        "loaded OmniAvatar %s DiT (LoRA r %d merged, scale %g) as %s on %s",
        size.name,
        lora.rank,
        lora.scaling,
        dtype,
        device,
    )
    return model
