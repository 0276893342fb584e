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
import functools
import math
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
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    if flag:
        meta["flag"] = flag
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(type(default), default), metadata=meta, **kw)  # a copy each
    return field(default=default, metadata=meta, **kw)


def document_fields(cls: type) -> type:
    """Append every field's type, default and help text to ``cls.__doc__``, so ``help(TrainConfig)`` and
    IDEs show what ``--help`` shows (one source: the field metadata)."""
    hints = typing.get_type_hints(cls)
    lines = [(cls.__doc__ or "").rstrip(), "", "Fields (the command's flags; ``--help`` says the same):", ""]
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
        lines.append(f"    {f.name} ({tp}, default {getattr(defaults, f.name)!r}):")
        lines.append(f"        {f.metadata.get('help', '')}")
        if f.metadata.get("choices"):
            lines.append(f"        One of: {', '.join(f.metadata['choices'])}.")
    cls.__doc__ = "\n".join(lines) + "\n"
    return cls


# Bounds of every YAML file fdalign reads (configs, sweep configs, a run's config.yaml): far above any real
# config (ImageNet's 1000 class names are about 20 KB and 2000 values), far below what would take minutes or
# gigabytes. PyYAML shares an aliased value instead of copying it, but every reader afterwards walks it
# expanded: 10 levels of 9-way aliases are 3.5e9 values, so the expanded size is what is bounded.
YAML_MAX_BYTES = 4 << 20
YAML_MAX_VALUES = 200_000


class YAMLSyntaxError(FDAlignError):
    """Text that is not YAML at all (a ``--set`` value may then be taken as a plain string)."""


def read_yaml(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    """The YAML document in ``path``, read by :func:`load_yaml_text`; a missing, oversized, non-UTF-8 or
    malformed file is an error naming it (``what``: "config file")."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > YAML_MAX_BYTES and path.is_file():
            raise FDAlignError(
                f"{what} {path} is {size / 2**20:.1f} MiB, more than the {YAML_MAX_BYTES >> 20} MiB fdalign reads "
                "as YAML; is it the right file?"
            )
        text = path.read_bytes().decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise FDAlignError(f"{what} {path} does not exist{missing_hint}") from None
    except IsADirectoryError:
        raise FDAlignError(f"{what} {path} is a folder, not a file") from None
    except OSError as e:
        raise FDAlignError(f"{what} {path} is not readable ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise FDAlignError(
            f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason}); it is damaged or not "
            "a YAML file: restore it or write it again"
        ) from None
    return load_yaml_text(text, f"{what} {path}")


def load_yaml_text(text: str, source: str) -> Any:
    """THE YAML reader of fdalign (``yaml.safe_load`` semantics): every file and ``--set`` value goes through it.

    Refused, with one line naming ``source``: invalid YAML, a key given twice in one mapping (naming the
    key and both lines; YAML would silently keep the last), an alias that contains itself, and a document
    of more than :data:`YAML_MAX_VALUES` values once its aliases are expanded (an alias bomb).
    """
    import yaml

    if len(text) > YAML_MAX_BYTES:
        raise FDAlignError(f"{source} holds {len(text)} characters, more than the {YAML_MAX_BYTES} fdalign reads")
    loader = _bounded_loader_class()(text)
    loader.fdalign_source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, source)
        if n > YAML_MAX_VALUES:
            raise FDAlignError(
                f"{source} holds {n} values once its aliases (*name) are expanded, more than the {YAML_MAX_VALUES} "
                "fdalign reads; write the values out instead of nesting aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise YAMLSyntaxError(f"{source} is not valid YAML: {e}".replace("\n", " ")) from None
    except RecursionError:
        raise FDAlignError(f"{source} nests its values too deeply to be a config") from None
    finally:
        loader.dispose()


def _expanded_size(root, source: str) -> int:
    """The number of nodes of a composed YAML document with every alias expanded (memoised: a shared node
    is counted once per reference without walking it again, so a bomb is measured in microseconds)."""
    import yaml

    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node) -> int:
        i = id(node)
        if i in memo:
            return memo[i]
        if i in active:
            raise FDAlignError(
                f"{source}: the value at line {node.start_mark.line + 1} contains itself through an alias; "
                "a config cannot be infinite"
            )
        active.add(i)
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        active.discard(i)
        memo[i] = n
        return n

    return size(root)


_LOADER = None


def _bounded_loader_class():
    """A SafeLoader that refuses a key given twice in one mapping (built on first use: yaml loads lazily)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding is the point
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: SafeLoader's own error names it
                        continue
                    if first is not None:
                        raise FDAlignError(
                            f"{self.fdalign_source}: key {key!r} appears twice in one mapping (line {first} and line "
                            f"{line}); YAML would keep only the last: delete one"
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep)

    _LOADER = BoundedLoader
    return _LOADER


FLOAT32_MAX = 3.4028234663852886e38


def beyond_float32(v: float | None) -> bool:
    """A finite number torch cannot hold in float32 (``--lr 1e39``): the optimiser would stop with an
    overflow error deep inside; inf stays legal (it diverges, and a diverged run is refused, in one line)."""
    return v is not None and math.isfinite(v) and abs(v) > FLOAT32_MAX


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

    def __post_init__(self) -> None:
        """Check and coerce every field at construction, as a YAML file is (``shots="8"`` -> 8,
        ``epochs=1.5`` -> an error naming ``epochs``), so a config built in Python fails here and
        not minutes into training."""
        hints = _hints(type(self))  # type: ignore[arg-type]  # a mixin of dataclasses
        source = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            coerced = _coerce(value, hints[f.name], f.name, source)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # a mixin of dataclasses

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the config"):
        """Build from a mapping; an unknown key is an error naming it and ``source``."""
        if not isinstance(d, dict):
            raise FDAlignError(f"{source} must be a mapping of option: value, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        d = {str(k).replace("-", "_"): v for k, v in d.items()}  # the CLI spelling (lp-epochs) too
        check_keys(d, names, source, hint=f"; see `{cls.COMMAND} --help` for the options")
        hints = _hints(cls)  # type: ignore[arg-type]
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
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # a mixin of dataclasses
        explicit = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
        config_file = getattr(args, "config", None)
        cfg = cls.from_yaml(config_file, base=base) if config_file else (base or cls())
        d = cfg.to_dict()
        d.update(explicit)
        return cls.from_dict(d, source="the command line")


# ----------------------------------------------------------------------------------------------
# typing


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` of a config class, once (it runs at every construction)."""
    return typing.get_type_hints(cls)


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
