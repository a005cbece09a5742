"""``docs/configuration.md``, generated from the ``Settings`` class so the two cannot drift.

Owns ``render_configuration_doc()`` (one section per setting: its YAML key, its environment
variable, type and bounds, default, and the field's docstring) and the command
``python -m headcast.server.config_docs [--check]`` that writes the file, or with ``--check`` exits
1 when the file differs from what the class says (the test suite runs the same comparison).

Knows nothing about the app; reads only ``server.settings``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from headcast.server.settings import ENV_PREFIX, LIST_SEPARATOR, Settings

logger = logging.getLogger(__name__)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
"""Where the generated reference lives in the repository."""

HEADER = f"""# Configuration

<!-- Generated from server/settings.py by `python -m headcast.server.config_docs`; do not edit by
hand (tests/unit/server/test_config_docs.py fails when this file is out of date). -->

`headcast serve` reads its settings from, lowest precedence first:

1. a YAML profile, `--config configs/<profile>.yaml` (keys as below);
2. environment variables, `{ENV_PREFIX}<KEY>` (e.g. `{ENV_PREFIX}PORT=9000`);
3. command-line flags (`--engine`, `--host`, `--port`).

An unknown key or a bad value stops the server with a message naming it (secret values,
such as API keys, are never repeated). In the environment, list settings are
separated by `{LIST_SEPARATOR}` (`{ENV_PREFIX}API_KEYS=key-one,key-two`) except
`ice_servers`, which takes JSON (`[{{"urls": ["stun:stun.example.com:3478"]}}]`).
Durations are in seconds unless the name says otherwise.
"""

BOUND_SYMBOLS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.MultipleOf, "multiple_of", "a multiple of"),
)
"""Constraint type, its attribute, and how the doc writes it."""

SCALAR_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extras = get_args(annotation)
        if base is Path and any(getattr(e, "path_type", None) == "file" for e in extras):
            return "path to an existing file"
        return _type_name(base)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(_type_name(arg) for arg in present) + ", or unset"
    if origin is list:
        item = get_args(annotation)[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "list of objects " + _type_name(item).removeprefix("object ")
        return f"list of {_type_name(item)}s"
    if annotation is SecretStr:
        return "secret string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = ", ".join(f"`{name}`" for name in annotation.model_fields)
        return f"object ({fields})"
    if annotation in SCALAR_NAMES:
        return SCALAR_NAMES[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for kind, attribute, symbol in BOUND_SYMBOLS:
            if isinstance(item, kind):
                parts.append(f"{symbol} {getattr(item, attribute)}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "empty" if value in ([], {}) else f"`{value}`"
    if field.default is PydanticUndefined or field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _description(field: FieldInfo) -> str:
    text = " ".join((field.description or "").split())
    return text.replace("``", "`")  # reStructuredText literals -> Markdown code


def render_configuration_doc() -> str:
    """The Markdown reference of every ``Settings`` field."""
    sections = [HEADER]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no docstring; document it")
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        lines = [
            f"## `{name}`",
            "",
            f"- Environment: `{ENV_PREFIX}{name.upper()}`",
            f"- Type: {kind}" + (f" ({bounds})" if bounds else ""),
            f"- Default: {_default(field)}",
            "",
            _description(field),
            "",
        ]
        sections.append("\n".join(lines))
    return "\n".join(sections).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m headcast.server.config_docs",
        description=f"Write {DOC_PATH.name} from the Settings class.",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file is out of date; write nothing"
    )
    parser.add_argument("--output", type=Path, default=DOC_PATH, help="file to write or check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rendered = render_configuration_doc()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != rendered:
            logger.error(
                "%s is out of date: run python -m headcast.server.config_docs", args.output
            )
            return 1
        logger.info("%s is up to date", args.output)
        return 0
    args.output.write_text(rendered, encoding="utf-8")
    logger.info("wrote %s (%d settings)", args.output, len(Settings.model_fields))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
