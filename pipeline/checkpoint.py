"""Reading checkpoint files into modules built on the meta device.

Owns: locating checkpoint files (with errors that name the file and point at
``headcast doctor``), reading state dicts without copying (mmapped safetensors, mmapped
``torch.load``), and materialising a meta-device module from a state dict. Knows nothing
about any particular model's keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from torch import nn

logger = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=nn.Module)

SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file; otherwise raise a CheckpointError that says what to do."""
    if not path.is_file():
        raise CheckpointError(
            f"{what} not found: {path}. Check the model directory with "
            f"`headcast doctor --model-dir {path.parent}`."
        )
    return path


def read_torch_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a ``torch.save`` state dict mmapped (weights only, no code execution)."""
    require_file(path, what)
    try:
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # corrupt file, wrong format: say which file
        raise CheckpointError(f"cannot read {what} at {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} at {path} holds a {type(state).__name__}, not a state dict")
    return state


def read_safetensors_state(paths: Iterable[Path], what: str) -> dict[str, torch.Tensor]:
    """Read one or more safetensors files (mmapped) into one state dict."""
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        require_file(path, what)
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    state[key] = handle.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"cannot read {what} at {path}: {exc}") from exc
    return state


def sharded_safetensors_files(directory: Path, stem: str) -> list[Path]:
    """The shard files of ``<stem>*.safetensors`` in ``directory``, via the index when present."""
    index = directory / f"{stem}{SAFETENSORS_INDEX_SUFFIX}"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(directory.glob(f"{stem}*.safetensors"))
    if not shards:
        raise CheckpointError(
            f"no {stem}*.safetensors files in {directory}. Check the model directory with "
            f"`headcast doctor --model-dir {directory}`."
        )
    return shards


def materialize(
    build: Callable[[], ModuleT],
    state: dict[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    what: str = "checkpoint",
) -> ModuleT:
    """Build a module on the meta device and assign ``state`` to it strictly.

    Tensors are cast to ``dtype`` (floating point ones only) and moved to ``device``.
    Buffers that are not in the checkpoint (computed constants) must be re-created by the
    module itself after loading, e.g. in a ``reset_buffers()`` hook it calls lazily.
    """
    with torch.device("meta"):
        module = build()
    converted = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value)
        for key, value in state.items()
    }
    try:
        module.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{what} does not fit the model: {exc}. Run `headcast doctor` to compare it "
            "with the expected tensor list."
        ) from exc
    return module.to(device)
