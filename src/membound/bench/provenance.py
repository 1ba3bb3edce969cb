"""Which source a result was measured on: the commit, from the first of

1. ``MEMBOUND_COMMIT`` (environment): ``<sha>`` or ``<sha>-dirty``; set it where the code runs
   from a copy of the tree without ``.git`` (a lent GPU machine: docs/performance.md);
2. a ``COMMIT`` file at the repository root (the same format), written before the copy is
   made: ``git describe --always --dirty --abbrev=40 > COMMIT``;
3. ``git`` in the checkout this file lives in.

``(None, None)`` when none of them answers: results then say ``commit: null`` rather than guess.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV_VAR = "MEMBOUND_COMMIT"
COMMIT_FILE = "COMMIT"
_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/membound/bench -> the checkout


def parse_commit(text: str) -> tuple[str | None, bool | None]:
    """``"<sha>"`` -> (sha, False); ``"<sha>-dirty"`` -> (sha, True); blank -> (None, None)."""
    text = text.strip()
    if not text:
        return None, None
    if text.endswith("-dirty"):
        return text.removesuffix("-dirty"), True
    return text, False


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True,
                             timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def source_commit(root: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the source being run; see the module docstring for the order."""
    env = os.environ.get(ENV_VAR)
    if env and env.strip():
        return parse_commit(env)
    file = (root or _REPO_ROOT) / COMMIT_FILE
    if file.is_file():
        commit = parse_commit(file.read_text(encoding="utf-8"))
        if commit[0]:
            return commit
    if root is not None:
        return None, None
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)
