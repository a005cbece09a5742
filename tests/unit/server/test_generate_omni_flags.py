"""``generate --engine omniavatar``'s recipe flags: the preset's values unless a flag is given.

``resolve_recipe`` turns the parsed flags into the recipe the render uses; these parse real
command lines with the command's own parser (nothing renders).
"""

from __future__ import annotations

import argparse

import pytest

from headcast.server.commands import generate, generate_omni


def parse(*flags: str) -> argparse.Namespace:
    """``headcast generate``'s own parser on ``flags`` (the required paths filled in)."""
    parser = argparse.ArgumentParser()
    generate.add_parser(parser.add_subparsers(dest="command"))
    paths = ["--image", "face.png", "--audio", "speech.wav", "--out", "out.mp4"]
    return parser.parse_args(["generate", "--engine", "omniavatar", *paths, *flags])


@pytest.mark.parametrize(
    ("flags", "size", "tiled"),
    [
        ((), "14b", True),  # official: the blended tiles, as the official code decodes
        (("--preset", "fast"), "14b", False),  # the fast presets: whole frames
        (("--preset", "fast"), "1.3b", False),
        (("--preset", "fast", "--tiled-vae"), "1.3b", True),
        (("--no-tiled-vae",), "14b", False),
    ],
)
def test_the_vae_tiling_follows_the_preset_unless_a_flag_is_given(
    flags: tuple[str, ...], size: str, tiled: bool
) -> None:
    assert generate_omni.resolve_recipe(parse(*flags), size).tiled_vae is tiled


def test_explicit_settings_override_the_preset_and_the_rest_stay() -> None:
    chosen = generate_omni.resolve_recipe(parse("--preset", "fast", "--steps", "8"), "1.3b")
    assert (chosen.name, chosen.steps, chosen.overlap, chosen.teacache) == (
        "fast-1.3b",
        8,
        5,
        0.14,
    )
