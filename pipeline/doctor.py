"""Checks a FlashTalk model directory against the official checkpoint manifests.

Owns: the list of files a model directory and a wav2vec2 directory must hold, reading each
checkpoint's tensor names, shapes and dtypes from its header (safetensors JSON header;
``torch.load(mmap=True)`` for ``.pth``, which maps the file without reading tensor data),
and a report of what is missing, unexpected, mis-shaped or of the wrong dtype. The expected
tensors are the manifests shipped in ``pipeline/manifests/`` (the official full-size
checkpoints' name -> shape lists). Knows nothing about building or running the models.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from headcast.pipeline.dit import CONFIG_FILENAME as DIT_CONFIG
from headcast.pipeline.dit import WEIGHTS_STEM as DIT_STEM
from headcast.pipeline.image import CLIP_CHECKPOINT_FILE as CLIP_FILE
from headcast.pipeline.image import VISUAL_PREFIX as CLIP_USED_PREFIX
from headcast.pipeline.text import T5_CHECKPOINT_FILE as T5_FILE
from headcast.pipeline.text import T5_TOKENIZER_DIR
from headcast.pipeline.vae import VAE_CHECKPOINT_NAME as VAE_FILE

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
"""Either of these makes a usable umt5 tokenizer directory."""

WAV2VEC_CONFIG = "config.json"
WAV2VEC_PREPROCESSOR = "preprocessor_config.json"
WAV2VEC_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WAV2VEC_LAYERS = 12
WAV2VEC_HIDDEN = 768

SAFETENSORS_HEADER_LEN_BYTES = 8
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024

SAFETENSORS_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "U8": "uint8",
    "F8_E4M3": "float8_e4m3fn",
}
FLOAT_DTYPES = {"bfloat16", "float16", "float32"}
MAX_LISTED = 10
"""Problems of one kind listed by name in the report before the rest are counted."""


@dataclass(frozen=True)
class TensorInfo:
    """Name-independent facts about one stored tensor."""

    shape: tuple[int, ...]
    dtype: str


@dataclass
class CheckResult:
    """What was checked for one component and what is wrong with it."""

    component: str
    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DoctorReport:
    """All checks of one ``doctor`` run."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    def render(self) -> str:
        """A readable, plain-text report."""
        lines: list[str] = []
        for result in self.results:
            status = "ok" if result.ok else "FAIL"
            lines.append(f"[{status:>4}] {result.component}: {result.path}")
            lines.extend(f"       - {problem}" for problem in result.problems)
            lines.extend(f"         {note}" for note in result.notes)
        verdict = "all checks passed" if self.ok else "problems found: fix them and run again"
        lines.append(verdict)
        return "\n".join(lines)


def load_manifest(name: str) -> dict[str, tuple[int, ...]]:
    """A shipped manifest (name -> shape) by file stem, e.g. ``"wan21_vae"``."""
    text = resources.files("headcast.pipeline").joinpath("manifests", f"{name}.json").read_text()
    return {key: tuple(shape) for key, shape in json.loads(text)["tensors"].items()}


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, shapes and dtypes from a safetensors header; checks the file length."""
    with path.open("rb") as handle:
        raw = handle.read(SAFETENSORS_HEADER_LEN_BYTES)
        if len(raw) != SAFETENSORS_HEADER_LEN_BYTES:
            raise ValueError("file is too short to be safetensors")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > MAX_SAFETENSORS_HEADER_BYTES:
            raise ValueError(f"implausible safetensors header of {header_len} bytes")
        header = json.loads(handle.read(header_len))
    header.pop("__metadata__", None)
    data_bytes = path.stat().st_size - SAFETENSORS_HEADER_LEN_BYTES - header_len
    infos: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        infos[name] = TensorInfo(
            tuple(entry["shape"]), SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"])
        )
        end = max(end, int(entry["data_offsets"][1]))
    if end > data_bytes:
        raise ValueError(
            f"file holds {data_bytes} data bytes but its header needs {end}: "
            "truncated download? fetch the file again"
        )
    return infos


def read_torch_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, shapes and dtypes of a ``torch.save`` state dict, mapped, not read."""
    state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    return {
        name: TensorInfo(tuple(value.shape), str(value.dtype).removeprefix("torch."))
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def compare(
    found: dict[str, TensorInfo],
    expected: dict[str, tuple[int, ...]],
    allowed_dtypes: set[str],
) -> list[str]:
    """Problems of ``found`` against ``expected`` shapes and the allowed dtypes."""
    problems: list[str] = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{name}: shape {list(found[name].shape)}, expected {list(expected[name])}"
        for name in sorted(set(found) & set(expected))
        if found[name].shape != expected[name]
    ]
    wrong_dtype = [
        f"{name}: dtype {info.dtype}, expected one of {sorted(allowed_dtypes)}"
        for name, info in sorted(found.items())
        if name in expected and info.dtype not in allowed_dtypes
    ]
    for label, items in (
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("shape mismatches", wrong_shape),
        ("dtype mismatches", wrong_dtype),
    ):
        if items:
            listed = ", ".join(items[:MAX_LISTED])
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            problems.append(f"{len(items)} {label}: {listed}{more}")
    return problems


def check_shards(
    component: str,
    directory: Path,
    stem: str,
    expected: dict[str, tuple[int, ...]],
    allowed_dtypes: set[str],
) -> CheckResult:
    """The ``<stem>*.safetensors`` shards of ``directory`` (via their index when present)
    against ``expected`` shapes and the allowed dtypes, from the headers only."""
    result = CheckResult(component, directory)
    index = directory / f"{stem}.safetensors.index.json"
    weight_map: dict[str, str] | None = None
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = sorted({directory / name for name in weight_map.values()})
    else:
        shards = sorted(directory.glob(f"{stem}*.safetensors"))
    if not shards:
        result.problems.append(f"no {stem}*.safetensors files in {directory}")
        return result
    found: dict[str, TensorInfo] = {}
    for shard in shards:
        if not shard.is_file():
            result.problems.append(f"missing shard {shard} (listed in {index.name})")
            continue
        try:
            infos = read_safetensors_header(shard)
        except (OSError, ValueError) as exc:
            result.problems.append(f"{shard.name}: {exc}")
            continue
        if weight_map is not None:
            misplaced = [n for n in infos if weight_map.get(n) != shard.name]
            if misplaced:
                result.problems.append(
                    f"{shard.name}: {len(misplaced)} tensors not mapped to it by "
                    f"{index.name}, e.g. {misplaced[0]}"
                )
        found.update(infos)
    result.problems += compare(found, expected, allowed_dtypes)
    result.notes.append(f"{len(found)} tensors in {len(shards)} shard(s)")
    return result


def _check_dit(model_dir: Path) -> CheckResult:
    result = check_shards(
        "DiT (diffusion_pytorch_model*.safetensors)", model_dir, DIT_STEM,
        load_manifest("flashtalk_dit_14b"), {"bfloat16"},
    )  # fmt: skip
    config = model_dir / DIT_CONFIG
    if not config.is_file():
        result.problems.insert(0, f"missing {config}")
    else:
        try:
            json.loads(config.read_text())
        except json.JSONDecodeError as exc:
            result.problems.insert(0, f"{config} is not valid JSON: {exc}")
    return result


def read_pth_for(result: CheckResult) -> dict[str, TensorInfo] | None:
    """The header of ``result.path`` (a ``torch.save`` file), or None with the problem noted."""
    path = result.path
    if not path.is_file():
        result.problems.append(f"missing {path}")
        return None
    try:
        return read_torch_header(path)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is a finding, not a crash
        result.problems.append(f"cannot read {path.name}: {exc}")
        return None


def check_pth(
    component: str,
    path: Path,
    manifest: str,
    allowed_dtypes: set[str],
    used_prefix: str | None = None,
) -> CheckResult:
    """A ``torch.save`` checkpoint against a shipped manifest (only ``used_prefix`` keys)."""
    result = CheckResult(component, path)
    found = read_pth_for(result)
    if found is None:
        return result
    expected = load_manifest(manifest)
    if used_prefix is not None:
        expected = {k: v for k, v in expected.items() if k.startswith(used_prefix)}
        ignored = [k for k in found if not k.startswith(used_prefix)]
        found = {k: v for k, v in found.items() if k.startswith(used_prefix)}
        result.notes.append(f"{len(ignored)} tensors outside {used_prefix}* are not used")
    result.problems += compare(found, expected, allowed_dtypes)
    result.notes.append(f"{len(found)} tensors checked")
    return result


def check_tokenizer(model_dir: Path) -> CheckResult:
    """The umt5 tokenizer folder under ``model_dir``."""
    path = model_dir / T5_TOKENIZER_DIR
    result = CheckResult("umt5 tokenizer", path)
    if not path.is_dir():
        result.problems.append(f"missing tokenizer directory {path}")
    elif not any((path / name).is_file() for name in TOKENIZER_FILES):
        result.problems.append(f"{path} has none of {', '.join(TOKENIZER_FILES)}")
    return result


def check_wav2vec(wav2vec_dir: Path, name: str = "chinese-wav2vec2-base") -> CheckResult:
    """A wav2vec2 *base* folder (Hugging Face layout): config, preprocessor, weights."""
    result = CheckResult(f"wav2vec2 ({name})", wav2vec_dir)
    if not wav2vec_dir.is_dir():
        result.problems.append(f"missing directory {wav2vec_dir}")
        return result
    config_path = wav2vec_dir / WAV2VEC_CONFIG
    if not config_path.is_file():
        result.problems.append(f"missing {config_path}")
    else:
        config = json.loads(config_path.read_text())
        layers = config.get("num_hidden_layers")
        hidden = config.get("hidden_size")
        if (layers, hidden) != (WAV2VEC_LAYERS, WAV2VEC_HIDDEN):
            result.problems.append(
                f"{config_path.name}: {layers} layers x {hidden} hidden, expected "
                f"{WAV2VEC_LAYERS} x {WAV2VEC_HIDDEN} (a wav2vec2 *base* model)"
            )
    if not (wav2vec_dir / WAV2VEC_PREPROCESSOR).is_file():
        result.problems.append(f"missing {wav2vec_dir / WAV2VEC_PREPROCESSOR}")
    weights = [wav2vec_dir / name for name in WAV2VEC_WEIGHTS if (wav2vec_dir / name).is_file()]
    if not weights:
        result.problems.append(f"none of {', '.join(WAV2VEC_WEIGHTS)} in {wav2vec_dir}")
    return result


def check_model_dir(model_dir: Path, wav2vec_dir: Path | None = None) -> DoctorReport:
    """Check every checkpoint the flashtalk engine needs; nothing is loaded."""
    report = DoctorReport()
    if not model_dir.is_dir():
        report.results.append(
            CheckResult("model directory", model_dir, [f"{model_dir} is not a directory"])
        )
    else:
        report.results += [
            _check_dit(model_dir),
            check_pth("VAE", model_dir / VAE_FILE, "wan21_vae", FLOAT_DTYPES),
            check_pth("T5 encoder", model_dir / T5_FILE, "umt5_xxl_encoder", {"bfloat16"}),
            check_tokenizer(model_dir),
            check_pth(
                "CLIP visual",
                model_dir / CLIP_FILE,
                "clip_xlm_roberta_vit_h_14",
                FLOAT_DTYPES,
                used_prefix=CLIP_USED_PREFIX,
            ),
        ]
    if wav2vec_dir is not None:
        report.results.append(check_wav2vec(wav2vec_dir))
    return report
