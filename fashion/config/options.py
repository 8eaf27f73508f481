"""Options declared once, as dataclass fields, and the argparse parser generated from them.

A config field made with `opt(...)` carries its help, group, choices, metavar and type in the
field's metadata; `build_parser` turns a config class into a parser, `configure` turns parsed flags
into a validated config: defaults -> `--config FILE.yaml` -> flags given on the command line.
No heavy imports here: `--help` must not load TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

CONFIG_HELP = "YAML file of option: value pairs; flags override it"
_TYPES = {"int": int, "float": float}


def opt(
    default: Any = None,
    help: str = "",
    *,
    group: str | None = None,
    choices: tuple | None = None,
    expected: str | None = None,
    metavar: str | None = None,
    type: Callable | None = None,
    shown: str | bool = True,
    positional: bool = False,
    nargs: str | None = None,
    action: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field that is also a command-line option.

    group: argument group in --help (None: top level); choices: allowed values (checked by argparse
    for flags and by `check_choices` for YAML values); expected: the "must be X" text of that check
    (default: `one of <choices>`); type: converts the flag's text (default: from the annotation,
    int or float); shown: False for no "(default: X)" in the help, a string to state the default
    in words; positional: an argument without `--` (with nargs); action: e.g. "append" (bool
    fields are store_true flags); factory: a default computed when the config is made.
    """
    meta = {
        "help": help,
        "group": group,
        "choices": choices,
        "expected": expected,
        "metavar": metavar,
        "type": type,
        "shown": shown,
        "positional": positional,
        "nargs": nargs,
        "action": action,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]  # (a field made by opt() has one or the other)


def parse_size(text: str) -> int:
    """Bytes from `20MB`, `5KB`, `5120`."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 5120, 5KB, 20MB)") from None


def _help(f: dataclasses.Field, flag_kind: str | None) -> str:
    m = f.metadata
    if flag_kind == "store_true" or m["shown"] is False:
        return m["help"]
    value = m["shown"] if isinstance(m["shown"], str) else default_of(f)
    return f"{m['help']} (default: {'none' if value is None else value})"


def add_field(container: Any, f: dataclasses.Field) -> None:
    """One argument for field `f`; its argparse default is SUPPRESS so `resolve` can tell flags given
    on the command line from defaults (a YAML config sits between the two)."""
    m = f.metadata
    kind = str(f.type).split("|")[0].strip()
    action = m["action"] or ("store_true" if kind == "bool" else None)
    kwargs: dict[str, Any] = {"help": _help(f, action), "default": argparse.SUPPRESS}
    if action:
        kwargs["action"] = action
    if action != "store_true":
        conv = m["type"] or _TYPES.get(kind)
        kwargs.update(
            {
                k: v
                for k, v in (
                    ("type", conv),
                    ("metavar", m["metavar"]),
                    ("choices", m["choices"]),
                    ("nargs", m["nargs"]),
                )
                if v is not None
            }
        )
    container.add_argument(f.name if m["positional"] else flag_of(f), **kwargs)


def build_parser(
    cls: type,
    prog: str,
    description: str,
    epilog: str = "",
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The parser of config class `cls`: top-level fields (group None), then `extra`'s arguments,
    then --config, then one argument group per field group in the order fields name them.

    `cls.GROUPS` may describe argument groups, by title. Descriptions are wrapped; the epilog
    (examples) keeps its lines.
    """
    described = getattr(cls, "GROUPS", {})
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    p = argparse.ArgumentParser(
        prog=invoked if invoked.startswith("fashion-") else prog,  # console scripts name themselves
        description=textwrap.fill(description, 79),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    for f in fields:
        if f.metadata["group"] is None:
            add_field(p, f)
    if extra is not None:
        extra(p)
    p.add_argument("--config", metavar="FILE.yaml", help=CONFIG_HELP)
    made: dict[str, Any] = {}
    for f in fields:
        title = f.metadata["group"]
        if title is not None:
            if title not in made:
                text = described.get(title)
                made[title] = p.add_argument_group(title, textwrap.fill(text, 77) if text else None)
            add_field(made[title], f)
    return p


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config; keys may use `-` or `_`. Unknown keys are an error (in `resolve`)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(cls: type, yaml_values: dict[str, Any], cli_values: dict[str, Any], source: str = "config") -> Any:
    """Build `cls` from defaults, then YAML values, then flags given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(yaml_values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}")
    merged = {**yaml_values, **{k: v for k, v in cli_values.items() if k in names}}
    return cls(**merged)


def configure(cls: type, args: dict[str, Any]) -> Any:
    """Parsed flags (a `vars(namespace)`, `config` naming the YAML file if any) -> a validated `cls`."""
    path = args.get("config")
    cfg = resolve(cls, load_yaml(path) if path else {}, args, source=path or "config")
    cfg.validate()
    return cfg


def check_choices(cfg: Any, error: type[Exception]) -> None:
    """Values from a YAML file bypass argparse's `choices`: check every field that has them."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if not choices or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in choices:
                expected = f.metadata["expected"] or f"one of {choices}"
                raise error(f"{flag_of(f)} must be {expected}, got {v!r}")
