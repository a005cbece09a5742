"""OmniAvatar's LoRA in the checkpoint key format, merged into the base weights at load time.

Owns: the names of the LoRA targets of a built DiT (what peft's ``target_modules`` matches:
every linear whose name is a target or ends with ``.`` + a target), the checkpoint tensor
list (the model's own tensors plus ``X.lora_A.default.weight`` ``[r, in]`` and
``X.lora_B.default.weight`` ``[out, r]`` per target: the goldens' and manifests' format),
splitting a checkpoint state into base weights and LoRA pairs (accepting peft's
``X.base_layer.weight`` names), and merging: ``W + (alpha / r) * B @ A`` computed in float32
on the weights' device, then cast to the model dtype. The merged model is a plain Wan
model: one GEMM per linear instead of three, and the fp8 path quantises merged weights.

Knows nothing about files (``pipeline.omniavatar.loader``) or the forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from headcast.pipeline.omniavatar.config import LoraConfig

LORA_A_SUFFIX = ".lora_A.default.weight"
"""Key suffix of a LoRA down-projection ``A`` ``[r, in]``."""

LORA_B_SUFFIX = ".lora_B.default.weight"
"""Key suffix of a LoRA up-projection ``B`` ``[out, r]``."""

BASE_LAYER = ".base_layer"
"""peft's name for the wrapped linear inside an injected model (``X.base_layer.weight``)."""

WEIGHT_SUFFIX = ".weight"


class LoraError(ValueError):
    """LoRA tensors are missing, unmatched or of the wrong shape."""


@dataclass(frozen=True)
class LoraPair:
    """One target's LoRA: ``delta = B @ A`` (times the scaling)."""

    down: torch.Tensor
    """``A`` ``[r, in]``."""
    up: torch.Tensor
    """``B`` ``[out, r]``."""


def is_target(name: str, targets: tuple[str, ...]) -> bool:
    """peft's rule: the module name equals a target or ends with ``"." + target``."""
    return any(name == target or name.endswith("." + target) for target in targets)


def lora_targets(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Qualified names of the linears that carry a LoRA, in module order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and is_target(name, lora.targets)
    ]


def checkpoint_shapes(model: nn.Module, lora: LoraConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the unmerged checkpoint format: the model's own plus A/B per target."""
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    for name in lora_targets(model, lora):
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        shapes[name + LORA_A_SUFFIX] = (lora.rank, linear.in_features)
        shapes[name + LORA_B_SUFFIX] = (linear.out_features, lora.rank)
    return shapes


def split_lora(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, LoraPair]]:
    """A checkpoint state -> (base weights under the plain names, LoRA pairs by target name).

    ``X.base_layer.weight`` / ``.bias`` become ``X.weight`` / ``.bias``. Raises ``LoraError``
    for an ``A`` without its ``B`` or the reverse.
    """
    base: dict[str, torch.Tensor] = {}
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(LORA_A_SUFFIX):
            downs[key.removesuffix(LORA_A_SUFFIX)] = value
        elif key.endswith(LORA_B_SUFFIX):
            ups[key.removesuffix(LORA_B_SUFFIX)] = value
        else:
            base[key.replace(BASE_LAYER + ".", ".")] = value
    unmatched = sorted(set(downs) ^ set(ups))
    if unmatched:
        raise LoraError(
            f"LoRA A/B pairs incomplete for {unmatched[:5]} (+{max(0, len(unmatched) - 5)})"
        )
    return base, {name: LoraPair(downs[name], ups[name]) for name in downs}


def merged_weight(
    weight: torch.Tensor, pair: LoraPair, scaling: float, dtype: torch.dtype
) -> torch.Tensor:
    """``weight + scaling * B @ A`` in float32 on ``weight``'s device, returned as ``dtype``."""
    out_features, in_features = weight.shape
    rank = pair.down.shape[0]
    if tuple(pair.down.shape) != (rank, in_features) or tuple(pair.up.shape) != (
        out_features,
        rank,
    ):
        raise LoraError(
            f"LoRA A {tuple(pair.down.shape)} / B {tuple(pair.up.shape)} do not fit a "
            f"[{out_features}, {in_features}] weight"
        )
    device = weight.device
    down = pair.down.to(device, torch.float32)  # [r, in]
    up = pair.up.to(device, torch.float32)  # [out, r]
    return torch.addmm(weight.float(), up, down, alpha=scaling).to(dtype)  # [out, in]


def merge_lora_into(
    state: dict[str, torch.Tensor],
    pairs: Mapping[str, LoraPair],
    scaling: float,
    dtype: torch.dtype,
) -> None:
    """Merge each pair whose ``<target>.weight`` is in ``state`` (in place, cast to ``dtype``)."""
    for target, pair in pairs.items():
        key = target + WEIGHT_SUFFIX
        if key in state:
            state[key] = merged_weight(state[key], pair, scaling, dtype)
