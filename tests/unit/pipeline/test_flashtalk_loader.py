"""Loading the DiT for a quantised engine block by block from an official-format checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headcast.pipeline.flashtalk import load_dit_prepared
from headcast.pipeline.speedups import SpeedOptions
from tests.reference import Golden, load_golden, rel_err
from tests.unit.pipeline.test_bench import _velocity
from tests.unit.pipeline.test_dit import _write_checkpoint

INT8_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def golden() -> Golden:
    return load_golden("dit_tiny")


def test_plain_options_load_the_whole_model(golden: Golden, tmp_path: Path) -> None:
    _write_checkpoint(golden, tmp_path)
    dit, prepared = load_dit_prepared(
        tmp_path, device="cpu", dtype=torch.float32, speed=SpeedOptions.official()
    )
    assert not prepared
    assert rel_err(_velocity(dit, golden), golden.outputs["velocity"]) < 1e-4


def test_int8_blocks_are_quantised_as_they_load(golden: Golden, tmp_path: Path) -> None:
    _write_checkpoint(golden, tmp_path)
    dit, prepared = load_dit_prepared(
        tmp_path, device="cpu", dtype=torch.float32, speed=SpeedOptions(quantize="int8")
    )
    assert prepared
    plain = sum(type(m) is torch.nn.Linear for block in dit.blocks for m in block.modules())
    assert plain == 0, f"{plain} block linears were left unquantised"
    error = rel_err(_velocity(dit, golden), golden.outputs["velocity"])
    assert 1e-5 < error < INT8_TOLERANCE
