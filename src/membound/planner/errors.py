"""The one error type the planner raises for input it cannot honour."""

from __future__ import annotations

import json
import os
from typing import Any

from membound.config import ConfigError


class PlannerError(ConfigError):
    """Bad planner input: an unknown GPU, model or precision, an impossible option.

    The message names the offending value and the valid choices. The CLI turns it
    into ``membound plan: error: ...`` and exit code 2, never a traceback.
    """


def choices_text(choices: list[str] | tuple[str, ...]) -> str:
    """``'a', 'b', 'c'`` for error messages."""
    return ", ".join(repr(c) for c in choices)


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a PlannerError naming ``what`` (e.g. "benchmark file")
    and the path when it is missing, unreadable, not JSON or not an object."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise PlannerError(f"{what} {path!r} does not exist") from e
    except (OSError, ValueError) as e:
        raise PlannerError(f"{what} {path!r} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise PlannerError(f"{what} {path!r} must hold a JSON object")
    return raw
