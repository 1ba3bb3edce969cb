"""kernels/cpu_hugepages.py: when the `membound` command re-executes itself with glibc's
huge-page tunable, and what it sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from membound.kernels import cpu_hugepages as hp


def test_thp_setting_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hp.thp_available(f)
    f.write_text("always madvise [never]\n")
    assert not hp.thp_available(f)
    assert not hp.thp_available(tmp_path / "missing")


def test_tunable_is_added_to_existing_tunables() -> None:
    assert hp.env_with_tunable({})["GLIBC_TUNABLES"] == hp.TUNABLE
    env = hp.env_with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{hp.TUNABLE}" and env["X"] == "1"
    assert hp.has_tunable(env)


@pytest.mark.parametrize(
    ("env", "system", "libc", "thp", "expected"),
    [
        ({}, "Linux", "glibc", True, True),
        ({"GLIBC_TUNABLES": hp.TUNABLE}, "Linux", "glibc", True, False),  # already set
        ({hp.NO_REEXEC: "1"}, "Linux", "glibc", True, False),  # refused / already re-executed
        ({}, "Darwin", "", True, False),
        ({}, "Linux", "musl", True, False),
        ({}, "Linux", "glibc", False, False),  # THP off in the kernel
    ],
)
def test_should_reexec(env: dict, system: str, libc: str, thp: bool, expected: bool) -> None:
    assert hp.should_reexec(env, system, libc, thp) is expected


def test_reexec_replaces_the_process_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(hp, "should_reexec", lambda env: True)
    monkeypatch.setattr(hp.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    hp.reexec_with_hugepages(["membound", "generate", "hi"])
    (exe, argv, env), = calls
    assert argv[1:] == ["membound", "generate", "hi"] and argv[0] == exe
    assert hp.has_tunable(env) and env[hp.NO_REEXEC] == "1"  # the child never re-executes


def test_no_reexec_means_no_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hp, "should_reexec", lambda env: False)
    monkeypatch.setattr(hp.os, "execve", lambda *a: pytest.fail("must not re-execute"))
    hp.reexec_with_hugepages(["membound"])


def test_hint_only_without_the_tunable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", hp.TUNABLE)
    assert hp.hint() is None
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(hp, "should_reexec", lambda env: True)
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in (hp.hint() or "")
