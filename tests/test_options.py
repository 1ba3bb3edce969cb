"""One source of truth for options: defaults, choices and help live on config fields and
the command-line flags are derived from them."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from membound.config import CacheConfig, EngineConfig, KernelConfig, ParallelConfig, SchedulerConfig
from membound.config.options import (
    add_options,
    field_default,
    option,
    option_dest,
    options,
    values_from,
)
from membound.engine.engine_args import EngineArgs, _all_options


@dataclasses.dataclass(frozen=True)
class Toy:
    size: int = option(16, "a size")
    ratio: float | None = option(None, "a ratio", default_text="auto")
    mode: str = option("a", "a mode", choices=("a", "b"), aliases=("-m",))
    flag: bool = option(False, "a switch")
    sizes: tuple[int, ...] | None = option(None, "some sizes")
    internal: int = 3


def test_flags_derived_from_fields() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    ns = parser.parse_args([])
    assert (ns.size, ns.ratio, ns.mode, ns.flag, ns.sizes) == (16, None, "a", False, None)
    ns = parser.parse_args(
        ["--size", "4", "--ratio", "0.5", "-m", "b", "--flag", "--sizes", "1", "2"]
    )
    assert Toy(**values_from(Toy, ns)) == Toy(4, 0.5, "b", True, (1, 2))
    assert not hasattr(ns, "internal")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    text = " ".join(parser.format_help().split())
    assert "a size (default: 16)" in text and "a ratio (default: auto)" in text


def test_engine_flags_match_config_defaults() -> None:
    """Every engine option's flag default is the EngineArgs default, and a mirrored field's
    default is its config field's: each default is written once."""
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    ns = parser.parse_args([])
    own = {f.name for f, _, cls in _all_options() if cls is EngineArgs}
    for f, opt, _ in _all_options():
        name = option_dest(f, opt)
        if not opt.cli:
            assert not hasattr(ns, name)
            continue
        assert getattr(ns, name) == getattr(EngineArgs, name), name
        if name not in own:
            assert getattr(EngineArgs, name) == field_default(f), name
    assert EngineArgs.from_cli_args(ns) == EngineArgs()
    mirrored = {
        option_dest(f, o)
        for c in (CacheConfig, SchedulerConfig, KernelConfig, ParallelConfig, EngineConfig)
        for f, o in options(c)
    }
    assert mirrored <= {f.name for f in dataclasses.fields(EngineArgs)}


def test_engine_args_reach_the_configs(tiny_llama: Path) -> None:
    cfg = EngineArgs(
        model=str(tiny_llama),
        block_size=4,
        max_num_seqs=3,
        kernel_backend="torch",
        cuda_graph_sizes=[2, 1],
        tensor_parallel_size=1,
        seed=7,
        preemption_mode="swap",
        generation_config="vllm",
    ).create_engine_config()
    assert cfg.cache_config.block_size == 4 and cfg.scheduler_config.max_num_seqs == 3
    assert cfg.kernel_config.backend == "torch" and cfg.kernel_config.cuda_graph_sizes == (1, 2)
    assert cfg.seed == 7 and cfg.scheduler_config.preemption_mode == "swap"
    assert cfg.generation_config == "vllm"
    assert cfg.scheduler_config.max_num_batched_tokens == SchedulerConfig.max_num_batched_tokens


def test_generation_config_sources(tiny_llama: Path, tmp_path: Path) -> None:
    import json

    from membound.config import ConfigError
    from membound.engine.engine_args import generation_defaults

    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.3}))

    def defaults(source: str) -> dict[str, typing.Any]:
        return generation_defaults(
            EngineArgs(model=str(tiny_llama), generation_config=source).create_engine_config()
        )

    assert defaults("vllm") == {}
    assert defaults(str(tmp_path)) == {"temperature": 0.3}
    with pytest.raises(ConfigError, match="neither 'auto', 'vllm' nor an existing folder"):
        defaults(str(tmp_path / "missing"))


def test_server_flags_match_their_fields() -> None:
    from membound.entrypoints.openai.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    assert ServerArgs.from_cli_args(parser.parse_args([])) == ServerArgs(
        api_key=ServerArgs.from_cli_args(parser.parse_args([])).api_key
    )
