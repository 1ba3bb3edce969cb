"""Results name the commit they were measured on even from a copy of the tree without .git
(a lent GPU machine): MEMBOUND_COMMIT first, then a COMMIT file, then git."""

from __future__ import annotations

from pathlib import Path

import pytest

from membound.bench import provenance
from membound.bench.results import git_commit


def test_environment_variable_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "COMMIT").write_text("from-file\n")
    monkeypatch.setenv("MEMBOUND_COMMIT", "abc123-dirty")
    assert provenance.source_commit(tmp_path) == ("abc123", True)
    assert git_commit() == ("abc123", True)  # what every bench JSON records


def test_commit_file_then_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEMBOUND_COMMIT", raising=False)
    assert provenance.source_commit(tmp_path) == (None, None)  # no file, no git asked
    (tmp_path / "COMMIT").write_text("def456\n")
    assert provenance.source_commit(tmp_path) == ("def456", False)
    assert provenance.parse_commit("  ") == (None, None)
