"""Config dataclasses <-> command-line flags and YAML, in one place.

A config is a dataclass whose fields come from :func:`option` (default, help, choices) and which
inherits :class:`ConfigFile`: it then reads and writes YAML and mappings, with one-line errors that
name the file and the field, and :func:`add_arguments` gives its command one flag per field.
TrainConfig, MetaConfig and the sweep config (:func:`read_yaml`, :func:`check_keys`) share it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

from fdalign.errors import FDAlignError


def default_workers() -> int:
    """DataLoader workers decoding evaluation images by default: ``min(cores, 8)``, the cores this process
    may use (a Slurm or taskset limit included)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def option(default, help: str, *, choices: tuple | None = None, flag: str | None = None, **kw):
    """A dataclass field carrying its CLI help (and choices) in the metadata."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if flag:
        meta["flag"] = flag
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def read_yaml(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    """The YAML document in ``path``; a missing or malformed file is an error naming it (``what``: "config file")."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FDAlignError(f"{what} {path} does not exist{missing_hint}") from None
    except yaml.YAMLError as e:
        raise FDAlignError(f"{what} {path} is not valid YAML: {e}".replace("\n", " ")) from None
    except UnicodeDecodeError as e:
        raise FDAlignError(
            f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason}); it is damaged or not "
            "a YAML file: restore it or write it again"
        ) from None
    except IsADirectoryError:
        raise FDAlignError(f"{what} {path} is a folder, not a file") from None


def check_keys(keys, known, source: str, what: str = "option", hint: str = "") -> None:
    """An unknown key is an error naming it, the closest known key and ``hint`` (where to look)."""
    unknown = sorted(set(keys) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        raise FDAlignError(
            f"{source}: unknown {what} {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + hint
        )


def check_choices(obj, source: str) -> None:
    """Every field with ``choices`` holds one of them (YAML files are not checked by argparse)."""
    for f in dataclasses.fields(obj):
        ch = f.metadata.get("choices")
        if ch and getattr(obj, f.name) not in ch:
            raise FDAlignError(f"{source}: {f.name} = {getattr(obj, f.name)!r} is not one of {', '.join(ch)}")


class ConfigFile:
    """Mapping / YAML reading and writing for a config dataclass made of :func:`option` fields."""

    COMMAND: ClassVar[str] = "fdalign train"  # named in errors and in the YAML file's first line
    TITLE: ClassVar[str] = "fdalign training config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the config"):
        """Build from a mapping; an unknown key is an error naming it and ``source``."""
        if not isinstance(d, dict):
            raise FDAlignError(f"{source} must be a mapping of option: value, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        d = {str(k).replace("-", "_"): v for k, v in d.items()}  # the CLI spelling (lp-epochs) too
        check_keys(d, names, source, hint=f"; see `{cls.COMMAND} --help` for the options")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k], k, source) for k, v in d.items()})

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML (atomically)."""
        import yaml

        from fdalign.io import atomic_write_text

        head = f"# {self.TITLE} ({self.COMMAND} --config this-file)\n"
        return atomic_write_text(path, head + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, base=None):
        """Read a YAML file; keys it sets override ``base`` (default: the defaults)."""
        d = read_yaml(path, "config file") or {}
        source = f"config file {Path(path)}"
        cls.from_dict(d, source=source)  # key / type checks with the file's name
        merged = (base or cls()).to_dict()
        merged.update({str(k).replace("-", "_"): v for k, v in d.items()})
        return cls.from_dict(merged, source=source)

    @classmethod
    def from_args(cls, args: argparse.Namespace, base=None):
        """``base`` (default: the defaults, or ``--config FILE`` over them) < the flags given explicitly."""
        explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        config_file = getattr(args, "config", None)
        cfg = cls.from_yaml(config_file, base=base) if config_file else (base or cls())
        d = cfg.to_dict()
        d.update(explicit)
        return cls.from_dict(d, source="the command line")


# ----------------------------------------------------------------------------------------------
# typing


def _unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _coerce(value, tp, name: str, source: str):
    """YAML value -> the field's type, with an error naming the field when it does not fit."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise FDAlignError(f"{source}: {name} may not be empty (null)")
    try:
        if typing.get_origin(inner) in (list, tuple):
            (elem,) = typing.get_args(inner)[:1]
            if isinstance(value, (str, int, float)):
                value = [value]
            return [_scalar(v, elem) for v in value]
        return _scalar(value, inner)
    except (TypeError, ValueError):
        raise FDAlignError(f"{source}: {name} = {value!r} is not a valid {getattr(inner, '__name__', inner)}") from None


def _scalar(v, tp):
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return v.lower() in ("true", "yes", "1", "on")
        raise ValueError(v)
    if tp is int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(v)
        return int(v)
    if tp is float:
        if isinstance(v, bool):
            raise ValueError(v)
        return float(v)
    if tp is str:
        if isinstance(v, (dict, list)):
            raise TypeError(v)
        return str(v)
    return v


# ----------------------------------------------------------------------------------------------
# argparse


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls``; defaults are SUPPRESSed so only explicit flags reach the namespace
    (they then override --config / --preset), and the default is written into the help."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        inner, _ = _unwrap_optional(hints[f.name])
        default = getattr(defaults, f.name)
        shown = (
            "none" if default in (None, []) else (" ".join(map(str, default)) if isinstance(default, list) else default)
        )
        help_text = f.metadata["help"]
        if "(default:" not in help_text:  # a help that words its own default keeps only that one
            help_text += f" (default: {shown})"
        help_text = help_text.replace("%", "%%")
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if inner is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) is list:
            elem = typing.get_args(inner)[0]
            kw["type"] = elem
            if f.name in ("ood", "target"):  # NAME=PATH lists (meta-train calls them targets)
                kw.update(action="extend", nargs="+", metavar="NAME=PATH")
            elif f.name in ("crop_scale", "adam_betas"):
                kw.update(nargs=2, metavar=("LO", "HI") if f.name == "crop_scale" else ("B1", "B2"))
            else:
                kw.update(nargs="+", metavar=elem.__name__.upper())
        else:
            kw["type"] = inner
            if inner is not str:
                kw["metavar"] = inner.__name__.upper()
        parser.add_argument(flag_name(f.name), **kw)
