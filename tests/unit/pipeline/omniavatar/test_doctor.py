"""`headcast doctor --engine omniavatar` on a fake 1.3B ``pretrained_models`` folder.

The fake files carry full-size headers only (sparse safetensors, stride-0 ``torch.save``
tensors), as in ``tests/unit/pipeline/test_doctor.py``; the expected tensors come from the
meta-built model, which ``test_model_parts`` checks against the reference manifests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headcast.pipeline import doctor
from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.doctor import check_omniavatar_dir
from headcast.pipeline.omniavatar.loader import OMNI_WEIGHTS_FILE, expected_tensors
from tests.unit.pipeline.test_doctor import _write_fake_pth, _write_safetensors_header

SIZE = omni_size("1.3b")


def _build(root: Path, *, drop_lora: str | None = None) -> Path:
    base, omni = expected_tensors(SIZE.dit, SIZE.lora)
    wan = root / SIZE.base_dir
    wan.mkdir(parents=True)
    _write_safetensors_header(
        wan / "diffusion_pytorch_model.safetensors", {k: list(v) for k, v in base.items()}, "BF16"
    )
    for file_name, manifest, dtype in (
        (doctor.VAE_FILE, "wan21_vae", torch.float32),
        (doctor.T5_FILE, "umt5_xxl_encoder", torch.bfloat16),
    ):
        _write_fake_pth(
            wan / file_name, {k: list(v) for k, v in doctor.load_manifest(manifest).items()}, dtype
        )
    (wan / doctor.T5_TOKENIZER_DIR).mkdir(parents=True)
    (wan / doctor.T5_TOKENIZER_DIR / "tokenizer.json").write_text("{}")
    weights = {k: list(v) for k, v in omni.items() if k != drop_lora}
    (root / SIZE.omni_dir).mkdir()
    _write_fake_pth(root / SIZE.omni_dir / OMNI_WEIGHTS_FILE, weights, torch.bfloat16)
    (root / SIZE.omni_dir / "config.json").write_text(
        json.dumps({"lora_rank": 128, "lora_alpha": 64})
    )
    wav2vec = root / SIZE.wav2vec_dir
    wav2vec.mkdir()
    (wav2vec / "config.json").write_text(json.dumps({"num_hidden_layers": 12, "hidden_size": 768}))
    (wav2vec / "preprocessor_config.json").write_text("{}")
    (wav2vec / "pytorch_model.bin").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("pretrained_models"))


def test_a_complete_folder_passes(folder: Path) -> None:
    report = check_omniavatar_dir(folder, SIZE)
    assert report.ok, report.render()
    assert len(report.results) == 6


def test_a_missing_lora_matrix_and_a_missing_file_are_named(tmp_path: Path) -> None:
    missing = "blocks.7.cross_attn.o.lora_B.default.weight"
    root = _build(tmp_path, drop_lora=missing)
    (root / SIZE.base_dir / doctor.VAE_FILE).unlink()
    text = check_omniavatar_dir(root, SIZE).render()
    assert f"1 missing tensors: {missing}" in text
    assert f"missing {root / SIZE.base_dir / doctor.VAE_FILE}" in text
