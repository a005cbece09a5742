"""``headcast doctor`` for OmniAvatar folders: every file the engine reads, from headers only.

Owns the list of checks of one size under a model folder (the official
``pretrained_models`` layout): the Wan 2.1 T2V DiT shards and ``pytorch_model.pt`` against
the tensors the meta-built model expects (LoRA rank from the checkpoint's ``config.json``
when present), the VAE and umT5 files against the shipped manifests, the tokenizer folder
and the wav2vec2-base-960h folder. Extra tensors in ``pytorch_model.pt`` are listed as a
note: the official loader ignores them too. Uses ``pipeline.doctor``'s readers and report;
knows nothing about running the models.
"""

from __future__ import annotations

from pathlib import Path

from headcast.pipeline.dit import WEIGHTS_STEM
from headcast.pipeline.doctor import (
    FLOAT_DTYPES,
    CheckResult,
    DoctorReport,
    check_pth,
    check_shards,
    check_tokenizer,
    check_wav2vec,
    compare,
    read_pth_for,
)
from headcast.pipeline.omniavatar.config import OmniSize
from headcast.pipeline.omniavatar.loader import (
    OMNI_CONFIG_FILE,
    OMNI_WEIGHTS_FILE,
    OmniFolders,
    expected_tensors,
    read_lora_config,
)
from headcast.pipeline.text import T5_CHECKPOINT_FILE
from headcast.pipeline.vae import VAE_CHECKPOINT_NAME

MAX_NOTED = 5
"""Extra tensor names quoted in a note."""


def _check_omni_weights(folders: OmniFolders, expected: dict[str, tuple[int, ...]]) -> CheckResult:
    path = folders.omni / OMNI_WEIGHTS_FILE
    result = CheckResult(f"OmniAvatar weights ({OMNI_WEIGHTS_FILE})", path)
    found = read_pth_for(result)
    if found is None:
        return result
    extra = sorted(set(found) - set(expected))
    result.problems += compare(
        {k: v for k, v in found.items() if k in expected}, expected, FLOAT_DTYPES
    )
    if extra:
        more = f" (+{len(extra) - MAX_NOTED} more)" if len(extra) > MAX_NOTED else ""
        result.notes.append(f"{len(extra)} tensors not used: {', '.join(extra[:MAX_NOTED])}{more}")
    if not (folders.omni / OMNI_CONFIG_FILE).is_file():
        result.notes.append(f"no {OMNI_CONFIG_FILE}: LoRA rank and alpha assumed 128 / 64")
    result.notes.append(f"{len(found)} tensors checked")
    return result


def check_omniavatar_dir(
    model_dir: Path, size: OmniSize, wav2vec_dir: Path | None = None
) -> DoctorReport:
    """Check every file OmniAvatar ``size`` needs under ``model_dir``; nothing is loaded."""
    report = DoctorReport()
    if not Path(model_dir).is_dir():
        report.results.append(
            CheckResult("model folder", model_dir, [f"{model_dir} is not a directory"])
        )
        return report
    folders = OmniFolders.under(model_dir, size, wav2vec_dir=wav2vec_dir)
    lora = read_lora_config(folders.omni, size.lora)
    base, omni = expected_tensors(size.dit, lora)
    report.results += [
        check_shards(
            f"Wan 2.1 T2V {size.name} DiT ({WEIGHTS_STEM}*.safetensors)",
            folders.base,
            WEIGHTS_STEM,
            base,
            FLOAT_DTYPES,
        ),
        _check_omni_weights(folders, omni),
        check_pth("VAE", folders.base / VAE_CHECKPOINT_NAME, "wan21_vae", FLOAT_DTYPES),
        check_pth(
            "T5 encoder", folders.base / T5_CHECKPOINT_FILE, "umt5_xxl_encoder", {"bfloat16"}
        ),
        check_tokenizer(folders.base),
        check_wav2vec(folders.wav2vec, size.wav2vec_dir),
    ]
    return report
