"""Access to ../shared/reference: the official goldens and full-size manifests.

The reference folder lives beside the checkout (``<repo>/../shared/reference``); set
``HEADCAST_REFERENCE_DIR`` to point elsewhere. Tests that need it skip with a clear reason
when it is absent, except in CI where its absence is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_dir() -> Path:
    """Return the reference folder, or skip (fail under CI) when it cannot be found."""
    env = os.environ.get("HEADCAST_REFERENCE_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "reference"
    if not path.is_dir():
        message = f"reference data not found at {path}; set HEADCAST_REFERENCE_DIR"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Golden:
    """One golden file split by key prefix (prefixes stripped)."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    consts: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict:
        """The ``config`` metadata entry parsed from JSON ({} when absent)."""
        return json.loads(self.metadata.get("config", "{}"))


_PREFIXES = {"state.": "state", "in.": "inputs", "const.": "consts", "out.": "outputs"}


OMNIAVATAR = "omniavatar"
"""Sub-folder of the reference data for the OmniAvatar engine (goldens/, manifests/)."""


def load_golden(name: str, folder: str = "") -> Golden:
    """Load ``[folder/]goldens/<name>.safetensors`` (name without extension)."""
    path = reference_dir() / folder / "goldens" / f"{name}.safetensors"
    golden = Golden()
    with safe_open(str(path), framework="pt") as handle:
        golden.metadata = dict(handle.metadata() or {})
        for key in handle.keys():
            for prefix, attr in _PREFIXES.items():
                if key.startswith(prefix):
                    getattr(golden, attr)[key[len(prefix) :]] = handle.get_tensor(key)
                    break
    return golden


def load_manifest(name: str, folder: str = "", table: str = "tensors") -> dict[str, list[int]]:
    """Load ``[folder/]manifests/<name>.json``'s ``table`` as tensor name -> shape."""
    data = json.loads((reference_dir() / folder / "manifests" / f"{name}.json").read_text())
    return {key: list(shape) for key, shape in data[table].items()}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64."""
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(torch.float64)
    assert out64.shape == ref64.shape, f"shape {tuple(out64.shape)} != {tuple(ref64.shape)}"
    return float((out64 - ref64).norm() / ref64.norm())


def assert_state_matches_manifest(
    state_shapes: dict[str, list[int]], manifest: dict[str, list[int]]
) -> None:
    """Fail with the missing, unexpected and mis-shaped names when they differ."""
    missing = sorted(set(manifest) - set(state_shapes))
    unexpected = sorted(set(state_shapes) - set(manifest))
    wrong = sorted(
        f"{k}: {state_shapes[k]} != {manifest[k]}"
        for k in set(manifest) & set(state_shapes)
        if list(state_shapes[k]) != list(manifest[k])
    )
    assert not (missing or unexpected or wrong), (
        f"missing={missing[:10]} (+{max(0, len(missing) - 10)}), "
        f"unexpected={unexpected[:10]} (+{max(0, len(unexpected) - 10)}), wrong={wrong[:10]}"
    )
