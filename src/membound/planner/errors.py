"""The one error type the planner raises for input it cannot honour."""

from __future__ import annotations

from membound.config import ConfigError


class PlannerError(ConfigError):
    """Bad planner input: an unknown GPU, model or precision, an impossible option.

    The message names the offending value and the valid choices. The CLI turns it
    into ``membound plan: error: ...`` and exit code 2, never a traceback.
    """


def choices_text(choices: list[str] | tuple[str, ...]) -> str:
    """``'a', 'b', 'c'`` for error messages."""
    return ", ".join(repr(c) for c in choices)
