"""`pipeline.doctor` on model directories built here from sparse fake checkpoints.

The fake files carry the full-size headers: safetensors shards whose JSON header lists the
manifest's tensors (the data region is a sparse hole), and ``torch.save`` files whose
tensors are stride-0 views of one element (so their storages are tiny).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from headcast.pipeline import doctor

SHARDS = 3


def _write_safetensors_header(path: Path, tensors: dict[str, list[int]], dtype: str) -> None:
    header: dict[str, dict] = {}
    offset = 0
    for name, shape in tensors.items():
        size = 2 * int(torch.tensor(shape).prod().item()) if shape else 2
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)  # sparse: no data bytes are written


def _write_fake_pth(path: Path, tensors: dict[str, list[int]], dtype: torch.dtype) -> None:
    one = torch.zeros(1, dtype=dtype)
    state = {name: one.reshape([1] * len(shape)).expand(shape) for name, shape in tensors.items()}
    torch.save(state, path)


def _build_model_dir(root: Path) -> tuple[Path, Path]:
    model_dir = root / "FlashTalk-14B"
    model_dir.mkdir()
    dit = {k: list(v) for k, v in doctor.load_manifest("flashtalk_dit_14b").items()}
    names = list(dit)
    weight_map: dict[str, str] = {}
    for shard in range(SHARDS):
        part = names[shard::SHARDS]
        file_name = f"diffusion_pytorch_model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors"
        _write_safetensors_header(model_dir / file_name, {n: dit[n] for n in part}, "BF16")
        weight_map.update({n: file_name for n in part})
    (model_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    (model_dir / "config.json").write_text(json.dumps({"dim": 5120, "num_layers": 40}))
    for file_name, manifest, dtype in (
        (doctor.VAE_FILE, "wan21_vae", torch.float32),
        (doctor.T5_FILE, "umt5_xxl_encoder", torch.bfloat16),
        (doctor.CLIP_FILE, "clip_xlm_roberta_vit_h_14", torch.float16),
    ):
        shapes = {k: list(v) for k, v in doctor.load_manifest(manifest).items()}
        _write_fake_pth(model_dir / file_name, shapes, dtype)
    tokenizer = model_dir / doctor.T5_TOKENIZER_DIR
    tokenizer.mkdir(parents=True)
    (tokenizer / "tokenizer.json").write_text("{}")
    wav2vec = root / "chinese-wav2vec2-base"
    wav2vec.mkdir()
    (wav2vec / "config.json").write_text(json.dumps({"num_hidden_layers": 12, "hidden_size": 768}))
    (wav2vec / "preprocessor_config.json").write_text("{}")
    (wav2vec / "pytorch_model.bin").write_bytes(b"")
    return model_dir, wav2vec


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build_model_dir(tmp_path_factory.mktemp("models"))


def test_a_complete_directory_passes(model_dirs: tuple[Path, Path]) -> None:
    report = doctor.check_model_dir(*model_dirs)
    assert report.ok, report.render()
    assert "all checks passed" in report.render()


def test_a_removed_dit_tensor_is_named(model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, wav2vec = model_dirs
    shard = sorted(model_dir.glob("diffusion_pytorch_model-*.safetensors"))[0]
    infos = doctor.read_safetensors_header(shard)
    removed = sorted(infos)[0]
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in model_dir.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / shard.name).unlink()
    _write_safetensors_header(
        copy / shard.name,
        {n: list(i.shape) for n, i in infos.items() if n != removed},
        "BF16",
    )
    report = doctor.check_model_dir(copy, wav2vec)
    assert not report.ok
    assert f"1 missing tensors: {removed}" in report.render()


def test_a_reshaped_tensor_and_a_wrong_dtype_are_named(
    model_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, wav2vec = model_dirs
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in model_dir.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / doctor.VAE_FILE).unlink()
    shapes = {k: list(v) for k, v in doctor.load_manifest("wan21_vae").items()}
    shapes["conv1.weight"] = [1, 2, 3]
    _write_fake_pth(copy / doctor.VAE_FILE, shapes, torch.int64)
    text = doctor.check_model_dir(copy, wav2vec).render()
    assert "conv1.weight: shape [1, 2, 3], expected [32, 32, 1, 1, 1]" in text
    assert "dtype mismatches" in text and "int64" in text


def test_missing_files_and_truncated_shards_are_reported(
    model_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, _ = model_dirs
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in model_dir.iterdir():
        if item.name not in (doctor.T5_FILE, "config.json"):
            (copy / item.name).symlink_to(item)
    shard = sorted(model_dir.glob("diffusion_pytorch_model-*.safetensors"))[-1]
    (copy / shard.name).unlink()
    with shard.open("rb") as source:
        header_len = struct.unpack("<Q", source.read(8))[0]
        source.seek(0)
        kept = source.read(8 + header_len + 100)  # the header and a sliver of the data
    (copy / shard.name).write_bytes(kept)
    text = doctor.check_model_dir(copy, tmp_path / "no-wav2vec").render()
    assert f"missing {copy / doctor.T5_FILE}" in text
    assert f"missing {copy / 'config.json'}" in text
    assert f"{shard.name}: file holds 100 data bytes" in text and "truncated download" in text
    assert f"missing directory {tmp_path / 'no-wav2vec'}" in text


def test_clip_ignores_exactly_the_unused_tensors(model_dirs: tuple[Path, Path]) -> None:
    report = doctor.check_model_dir(model_dirs[0])
    clip = next(r for r in report.results if r.component == "CLIP visual")
    manifest = doctor.load_manifest("clip_xlm_roberta_vit_h_14")
    unused = sum(1 for k in manifest if not k.startswith("visual."))
    assert f"{unused} tensors outside visual.* are not used" in clip.notes
