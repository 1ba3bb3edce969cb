"""Options described once: a dataclass field carries its default, choices and help text, and
the command-line flag is derived from it (as vLLM derives its flags from its config fields).

```
@dataclass(frozen=True)
class CacheConfig:
    block_size: int = option(16, "tokens per KV block")

add_options(parser.add_argument_group("cache"), CacheConfig)   # --block-size N (default: 16)
```

The flag is ``--`` + the field name with ``-`` for ``_`` (or ``flag=``), the type comes from
the annotation (``bool`` -> ``--x/--no-x``, ``list[int]`` / ``tuple[int, ...]`` -> several
values, ``X | None`` -> X), and ``--help`` shows the default. Stdlib only, nothing at import.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_MISSING: Any = dataclasses.MISSING
OPTION_KEY = "membound_option"


@dataclasses.dataclass(frozen=True)
class Option:
    """What a field says about its command-line flag."""

    help: str
    choices: tuple[Any, ...] | None = None
    flag: str | None = None  # default: --field-name
    aliases: tuple[str, ...] = ()  # extra spellings (e.g. "-tp")
    dest: str | None = None  # the argparse / EngineArgs name, when it differs from the field's
    type: Callable[[str], Any] | None = None  # default: from the annotation
    metavar: str | None = None
    default_text: str | None = None  # what --help shows as the default (e.g. "the model's")
    cli: bool = True  # False: a field with help text but no flag


def option(
    default: Any = _MISSING,
    help: str = "",  # noqa: A002 - argparse's name
    *,
    default_factory: Any = _MISSING,
    choices: Iterable[Any] | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    dest: str | None = None,
    type: Callable[[str], Any] | None = None,  # noqa: A002 - argparse's name
    metavar: str | None = None,
    default_text: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field whose metadata describes its flag (see the module docstring)."""
    meta = {
        OPTION_KEY: Option(
            help=help,
            choices=tuple(choices) if choices is not None else None,
            flag=flag,
            aliases=tuple(aliases),
            dest=dest,
            type=type,
            metavar=metavar,
            default_text=default_text,
            cli=cli,
        )
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_of(cls: type, name: str) -> Option | None:
    """The Option of ``cls``'s field ``name`` (None when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(OPTION_KEY)
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def options(cls: type) -> list[tuple[dataclasses.Field[Any], Option]]:
    """The fields of ``cls`` that carry an Option, in declaration order."""
    return [
        (f, f.metadata[OPTION_KEY]) for f in dataclasses.fields(cls) if OPTION_KEY in f.metadata
    ]


def option_dest(f: dataclasses.Field[Any], opt: Option) -> str:
    return opt.dest or f.name


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return None


def add_option(
    group: Any,
    f: dataclasses.Field[Any],
    opt: Option,
    hints: dict[str, Any],
    *,
    flag: str | None = None,
    default: Any = _MISSING,
) -> None:
    """Add the flag of one field to ``group`` (an argparse parser or argument group)."""
    dest = option_dest(f, opt)
    name = flag or opt.flag or "--" + dest.replace("_", "-")
    value = field_default(f) if default is _MISSING else default
    shown = opt.default_text if opt.default_text is not None else _shown(value)
    help_text = f"{opt.help} (default: {shown})" if opt.help else f"(default: {shown})"
    kwargs: dict[str, Any] = {"dest": dest, "default": value, "help": help_text.replace("%", "%%")}
    base, many = _base_type(hints.get(f.name, str))
    if base is bool and not many:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = opt.type or (base if base in (int, float, str) else str)
        if many:
            kwargs["nargs"] = "+"
        if opt.choices is not None:
            kwargs["choices"] = list(opt.choices)
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
    group.add_argument(name, *opt.aliases, **kwargs)


def add_options(group: Any, cls: type, *, skip: Iterable[str] = ()) -> None:
    """Add a flag for every field of ``cls`` that carries an Option (``cli=True``)."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    for f, opt in options(cls):
        if opt.cli and f.name not in skipped:
            add_option(group, f, opt, hints)


def values_from(cls: type, namespace: Any) -> dict[str, Any]:
    """``{field name: value}`` for the fields of ``cls`` whose flag ``namespace`` holds."""
    out = {}
    for f, opt in options(cls):
        dest = option_dest(f, opt)
        if hasattr(namespace, dest):
            value = getattr(namespace, dest)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(scalar type, takes several values) of an annotation; ``X | None`` -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence):
        return (args[0] if args else str), True
    if args and origin is not None and origin not in (list, tuple):
        return _base_type(args[0])
    return hint, False


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    return str(value)
