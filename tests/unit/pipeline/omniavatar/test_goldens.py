"""Every ``out.*`` of every OmniAvatar golden, recomputed from its ``in.*`` and compared.

For each golden file a fixture computes a dict under the golden's own output names; a test
asserts that the dict covers every ``out.*`` of the file and that each tensor is within
``GOLDEN_TOL`` (relative, float32). The sampling goldens are checked twice: each step from
its recorded input latents (teacher forcing: velocities, guided velocity, update, TeaCache
decisions) and the whole chain from the picture and the audio (VAE encodes, ``y``, audio
windows, every step's latents, final latents, decoded frames, the cut video). The DiT's
guidance passes are checked one per forward and batched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch

from headcast.pipeline.omniavatar.audio import (
    OmniAudioEncoder,
    clip_frames,
    padded_frames,
    segment_audio,
)
from headcast.pipeline.omniavatar.denoise import SegmentInputs, SegmentRun
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.omniavatar.guidance import Pass
from headcast.pipeline.omniavatar.models import prompt_context
from headcast.pipeline.omniavatar.recipe import TINY, Recipe
from headcast.pipeline.omniavatar.render import OmniAvatarRenderer
from headcast.pipeline.omniavatar.schedule import flow_sigmas, flow_timesteps
from headcast.pipeline.omniavatar.teacache import WAN_T2V_14B_COEFFICIENTS
from headcast.pipeline.omniavatar.tiled_vae import TiledVAE
from headcast.pipeline.text import PromptEncoder
from tests.reference import Golden, rel_err
from tests.unit.pipeline.omniavatar.conftest import (
    GOLDEN_TOL,
    meta_text,
    omni_golden,
    sample_args,
)

logger = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]

SEGMENT_KEYS = ("lat", "y", "audio_emb", "latents")
"""Per-segment tensors the render shows under ``seg{k}.<key>``."""


def assert_matches(golden: Golden, produced: Outputs, *, name: str) -> None:
    """Every ``out.*`` of ``golden`` is in ``produced`` and within ``GOLDEN_TOL``."""
    missing = sorted(set(golden.outputs) - set(produced))
    assert not missing, f"{name}: outputs not computed: {missing}"
    errors = {key: rel_err(produced[key], golden.outputs[key]) for key in sorted(golden.outputs)}
    worst = max(errors, key=errors.__getitem__)
    logger.info("%s: %d outputs, worst %s %.2e", name, len(errors), worst, errors[worst])
    bad = {key: f"{error:.2e}" for key, error in errors.items() if not error < GOLDEN_TOL}
    assert not bad, f"{name}: relative errors over {GOLDEN_TOL}: {bad}"


# -- the DiT ---------------------------------------------------------------------------------


def _capture(dit: OmniAvatarDiT) -> tuple[Outputs, Callable[[], None]]:
    """Forward hooks storing the submodules' outputs under the golden's ``inter.*`` names."""
    seen: Outputs = {}
    handles = []

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            seen[f"inter.{name}"] = output.detach().clone()

        return hook

    modules = {
        "patch_embedding": dit.patch_embedding,
        "text_embedding": dit.text_embedding,
        "time_embedding": dit.time_embedding,
        "time_projection": dit.time_projection,
        "audio_proj": dit.audio_proj,
        "head": dit.head,
    }
    modules.update({f"block{i}": block for i, block in enumerate(dit.blocks)})
    modules.update({f"audio_cond_projs.{j}": proj for j, proj in enumerate(dit.audio_cond_projs)})
    for name, module in modules.items():
        handles.append(module.register_forward_hook(keep(name)))
    return seen, lambda: [handle.remove() for handle in handles]


@pytest.fixture(scope="module")
def dit_outputs(dit: OmniAvatarDiT, dit_golden: Golden) -> Outputs:
    x, t, y, audio = (dit_golden.inputs[k] for k in ("x", "timestep", "y", "audio_emb"))
    context, negative = dit_golden.inputs["context"], dit_golden.inputs["context_neg"]
    seen, remove = _capture(dit)
    with torch.no_grad():
        velocity = dit(x, t, context, y, audio)
        remove()
        uncond = dit(x, t, negative, y, torch.zeros_like(audio))
    out = {"velocity": velocity, "velocity_uncond": uncond}
    for name, value in seen.items():  # the golden keeps the official layouts
        out[name] = value.reshape(dit_golden.outputs[name].shape)
    return out


def test_dit_every_output_matches(dit_golden: Golden, dit_outputs: Outputs) -> None:
    assert_matches(dit_golden, dit_outputs, name="omni_dit_tiny")


def test_dit_guidance_passes_batched_match_one_by_one(
    dit: OmniAvatarDiT, dit_golden: Golden
) -> None:
    inputs = dit_golden.inputs
    audio = inputs["audio_emb"]
    with torch.no_grad():
        both = dit(
            inputs["x"].expand(2, -1, -1, -1, -1),
            inputs["timestep"].expand(2),
            torch.cat([inputs["context"], inputs["context_neg"]]),
            inputs["y"].expand(2, -1, -1, -1, -1),
            torch.cat([audio, torch.zeros_like(audio)]),
        )
    assert rel_err(both[:1], dit_golden.outputs["velocity"]) < GOLDEN_TOL
    assert rel_err(both[1:], dit_golden.outputs["velocity_uncond"]) < GOLDEN_TOL


# -- VAE, text, audio ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_golden() -> Golden:
    return omni_golden("omni_vae_tiny")


def test_vae_every_output_matches(vae: TiledVAE, vae_golden: Golden) -> None:
    vae_model = vae.vae
    assert torch.equal(vae_model.latent_mean, vae_golden.consts["latent_mean"])
    assert torch.equal(vae_model.latent_std, vae_golden.consts["latent_std"])
    produced = {
        "latent": vae.encode(vae_golden.inputs["video"]),
        "video": vae.decode(vae_golden.inputs["latent"]),
    }
    assert_matches(vae_golden, produced, name="omni_vae_tiny")


def test_text_every_output_matches(
    prompt_encoder: PromptEncoder, text_golden: Golden, text_len: int
) -> None:
    produced: Outputs = {}
    for key, kind in (("prompt", "pos"), ("negative_prompt", "neg")):
        ids, mask = text_golden.inputs[f"ids_{kind}"], text_golden.inputs[f"mask_{kind}"]
        with torch.no_grad():
            produced[f"encoder_{kind}"] = prompt_encoder.encoder(ids, mask)
        produced[f"context_{kind}"] = prompt_context(
            prompt_encoder, meta_text(text_golden, key), text_len
        )
    assert_matches(text_golden, produced, name="omni_text_tiny")
    assert produced["context_pos"][0, int(text_golden.inputs["mask_pos"].sum()) :].abs().max() == 0


def test_audio_every_output_matches(audio_encoder: OmniAudioEncoder) -> None:
    golden = omni_golden("omni_audio_tiny")
    samples = golden.inputs["audio_16k"].numpy()
    frames_per_segment, overlap = 25, 13  # the call's L and overlap_frame
    frames = padded_frames(clip_frames(samples.size), frames_per_segment, overlap)
    values = audio_encoder.input_values(samples, frames)
    with torch.no_grad():
        conv = audio_encoder.model.feature_extractor(values)
    embeddings = audio_encoder.encode(samples, frames)
    first = segment_audio(embeddings, 0, frames_per_segment, overlap, None)
    second = segment_audio(embeddings, 1, frames_per_segment, overlap, first)
    produced = {
        "audio.input_values": values,
        "audio.conv_features": conv,
        "audio.embeddings": embeddings,
        "audio.segment0": first[None],
        "audio.segment1": second[None],
    }
    assert_matches(golden, produced, name="omni_audio_tiny")


# -- sampling: teacher forcing, then the whole chain ----------------------------------------


def golden_recipe(golden: Golden) -> Recipe:
    """The tiny recipe with the values the sampling golden used (its one 32x48 bucket)."""
    args = sample_args(golden)
    return TINY.with_overrides(
        buckets=tuple(tuple(bucket) for bucket in args["image_sizes_720"]),
        max_tokens=args["max_tokens"],
        overlap=args["overlap_frame"],
        steps=args["num_steps"],
        guidance=args["guidance_scale"],
        audio_guidance=args["audio_scale"],
        teacache=args["tea_cache_l1_thresh"],
        seed=args["seed"],
        negative_prompt=args["negative_prompt"],
    )


def teacher_forced(dit: OmniAvatarDiT, golden: Golden, *, batch_passes: bool) -> Outputs:
    """Every step of every segment from the golden's recorded step inputs."""
    out: Outputs = {}
    options = golden_recipe(golden).sampler_options(batch_passes=batch_passes)
    recorded = golden.outputs
    segment = 0
    while f"seg{segment}.lat" in recorded:
        fixed = 1 if segment == 0 else golden_recipe(golden).overlap_latents
        inputs = SegmentInputs(
            recorded[f"seg{segment}.lat"],
            fixed,
            recorded[f"seg{segment}.y"],
            recorded[f"seg{segment}.audio_emb"],
            recorded["context_pos"],
            recorded["context_neg"],
            golden.inputs[f"noise.seg{segment}"],
        )
        with torch.no_grad():
            run = SegmentRun(dit, options, inputs)
            for step in range(options.steps):
                prefix = f"seg{segment}.step{step}"
                result = run.step(step, recorded[f"{prefix}.x_in"])
                out.update({f"{prefix}.v_{p.value}": v for p, v in result.velocities.items()})
                out[f"{prefix}.v_guided"] = result.guided
                out[f"{prefix}.x_out"] = result.latents
        out["sigmas"], out["timesteps"] = run.sigmas, run.timesteps
        rows = [
            (run.schedule.skip, run.schedule.accumulated)
            if p in run.cached
            else ((False,) * options.steps, (0.0,) * options.steps)
            for p in (Pass.COND, Pass.UNCOND_AUDIO, Pass.UNCOND)
        ]
        out["teacache.skip"] = torch.tensor([row[0] for row in rows], dtype=torch.int64)
        out["teacache.accumulated"] = torch.tensor([row[1] for row in rows], dtype=torch.float64)
        segment += 1
    return out


@pytest.mark.parametrize("name", ["omni_sample_tiny", "omni_sample_teacache_tiny"])
@pytest.mark.parametrize("batch_passes", [False, True], ids=["pass-by-pass", "batched"])
def test_every_step_matches_from_its_recorded_input(
    dit: OmniAvatarDiT, name: str, batch_passes: bool
) -> None:
    golden = omni_golden(name)
    out = teacher_forced(dit, golden, batch_passes=batch_passes)
    step_keys = [key for key in golden.outputs if ".step" in key and not key.endswith(".x_in")]
    assert step_keys and not sorted(set(step_keys) - set(out))
    for key in step_keys:
        assert rel_err(out[key], golden.outputs[key]) < GOLDEN_TOL, key
    assert rel_err(out["sigmas"], golden.consts["sigmas"]) < GOLDEN_TOL
    assert rel_err(out["timesteps"], golden.consts["timesteps"]) < GOLDEN_TOL
    if "teacache.skip" in golden.outputs:
        assert torch.equal(out["teacache.skip"], golden.outputs["teacache.skip"])
        assert (
            rel_err(out["teacache.accumulated"], golden.outputs["teacache.accumulated"])
            < GOLDEN_TOL
        )


def test_schedule_and_coefficients_are_the_official_constants() -> None:
    golden = omni_golden("omni_sample_teacache_tiny")
    steps = sample_args(golden)["num_steps"]
    assert torch.allclose(flow_sigmas(steps), golden.consts["sigmas"], rtol=0, atol=1e-7)
    assert torch.allclose(
        flow_timesteps(flow_sigmas(steps)), golden.consts["timesteps"], rtol=0, atol=1e-4
    )
    expected = golden.consts["teacache_coefficients_14b"].tolist()
    assert list(WAN_T2V_14B_COEFFICIENTS) == expected


def chained(
    golden: Golden, dit: OmniAvatarDiT, vae: TiledVAE, audio: OmniAudioEncoder, prompts: object
) -> Outputs:
    """The whole render from the picture and the audio, every intermediate by its golden name."""
    silence = round(sample_args(golden)["sample_rate"] * golden_recipe(golden).silence_s)
    recorded_audio = golden.inputs["audio_16k"]
    assert recorded_audio[:silence].abs().max() == 0  # the official 0.3 s is in the recording
    recipe = golden_recipe(golden)
    renderer = OmniAvatarRenderer(dit, vae, audio, prompts, recipe)  # type: ignore[arg-type]
    out: Outputs = {}

    def keep(name: str, value: torch.Tensor) -> None:
        out[name] = value.detach().clone()

    segments = renderer.render(
        golden.inputs["image_hwc_uint8"].numpy(),
        recorded_audio[silence:].numpy(),
        meta_text(golden, "prompt"),
        noise=lambda index, _shape: golden.inputs[f"noise.seg{index}"],
        probe=keep,
    )
    out["video"] = torch.cat([segment.frames for segment in segments])[None]  # [1, F, 3, H, W]
    context_pos, context_neg = prompts(
        [meta_text(golden, "prompt"), golden_recipe(golden).negative_prompt]
    )  # type: ignore[operator]
    out["context_pos"], out["context_neg"] = context_pos, context_neg
    return out


@pytest.fixture(scope="module")
def sample_chain(
    dit: OmniAvatarDiT, vae: TiledVAE, audio_encoder: OmniAudioEncoder, prompts: object
) -> tuple[Golden, Outputs]:
    golden = omni_golden("omni_sample_tiny")
    return golden, chained(golden, dit, vae, audio_encoder, prompts)


def test_the_whole_two_segment_render_matches(sample_chain: tuple[Golden, Outputs]) -> None:
    golden, produced = sample_chain
    assert_matches(golden, produced, name="omni_sample_tiny (chained)")
    first = produced["seg0.frames"][:, : golden.outputs["video"].shape[1]]
    assert (
        rel_err(first, golden.outputs["video"][:, : first.shape[1]]) < GOLDEN_TOL
    )  # seg0.frames = video[:, :25]


def test_the_teacache_render_matches(
    dit: OmniAvatarDiT, vae: TiledVAE, audio_encoder: OmniAudioEncoder, prompts: object
) -> None:
    golden = omni_golden("omni_sample_teacache_tiny")
    produced = chained(golden, dit, vae, audio_encoder, prompts)
    produced.update(
        {
            k: v
            for k, v in teacher_forced(dit, golden, batch_passes=True).items()
            if k.startswith("teacache.")
        }
    )
    del produced["video"]  # one segment: the golden keeps its latents, not its frames
    assert_matches(
        golden,
        {k: v for k, v in produced.items() if k in golden.outputs},
        name="omni_sample_teacache_tiny (chained)",
    )
