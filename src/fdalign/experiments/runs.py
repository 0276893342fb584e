"""What ``fdalign report`` reads: the training runs under its input folders, and what it did not use.

A training run is a folder holding both ``config.yaml`` and ``metrics.json`` (what ``fdalign train``
and ``fdalign meta-train`` leave); the ``eval/`` and ``eval-heads/`` folders inside a run hold a
``metrics.json`` too, but they are evaluations, not runs. Each run has a key (data set, shots,
seed, method). Two runs with one key are never merged silently:

* the same settings: the first one read is used, the other is listed as a duplicate;
* other settings: they are kept apart, the later ones under a row named after the settings that
  differ (``fd-align [epochs=2]``), and the report says so.

Cells of a sweep that are not finished (failed, interrupted, never run, or with a damaged
``status.json``) are listed with their state and error, never dropped without a word.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError
from fdalign.experiments.rows import ZERO_SHOT

RUN_FILES = ("config.yaml", "metrics.json")
STATUS_FILE = "status.json"
# Settings that never change a run's numbers, or that its key and its split hashes already say.
NOT_SETTINGS = frozenset(
    {
        "progress",
        "num_workers",
        "eval_batch_size",
        "tensorboard",
        "logger",
        "device",
        "resume",
        "verify_images",
        "out",
        "seed",
        "shots",
        "k_shot",
        "data",
        "ood",
        "target",
        "image_root",
        "classnames",
        "split_file",
        "f0_cache",
    }
)


def method_label(config: dict) -> str:
    """A name for a run made outside a sweep, from its settings."""
    if config.get("mode") == "linear-probe":
        return "lp"
    if config.get("mode") == "lp-ft":
        return "lp-ft"
    method = config.get("method") or "fd-align"
    if method not in ("fd-align", "fine-tune"):  # logit-kd, flyp, clip-lora, ... (docs/methods.md)
        return method
    if method == "fine-tune" or float(config.get("beta", 1.0)) == 0:
        return "fine-tune"
    spurious = config.get("spurious") or "real"
    return "fd-align" if spurious == "real" else f"fd-align-{spurious}"


def model_alpha(model: str) -> float | None:
    """WiSE-FT mixing weight of a model name in ``metrics.json`` (``zero-shot`` 0, ``fine-tuned`` 1)."""
    if model == ZERO_SHOT:
        return 0.0
    if model == "fine-tuned":
        return 1.0
    m = re.fullmatch(r"wiseft-([0-9.eE+-]+)", model)
    return float(m.group(1)) if m else None


class _Keyed:
    """The report's key of a run: data set, shots, seed and the method it was run as."""

    def __post_init__(self):
        self.base_method = self.base_method or self.method

    @property
    def key(self) -> str:
        return f"{self.dataset}/k{self.shots}/s{self.seed}/{self.base_method}"


@dataclass
class RunRecord(_Keyed):
    """One training run as the report sees it; ``method`` is its row name (with a settings suffix
    when runs of the same key differ), ``base_method`` the method it was run as."""

    dir: Path
    dataset: str
    shots: int
    seed: int
    method: str
    metrics: dict  # {set: {model: {"top1", "top5", "n"}}}
    roles: dict  # {set: test | val | ood}
    chosen_alpha: float | None
    hashes: dict
    config: dict
    environment: dict = field(default_factory=dict)
    base_method: str = ""
    val_top1: float | None = None  # the selected model's val top-1 (what a val_choice row chooses by)
    log: Path | None = None  # log.csv: one row per step (images_per_s gives the step time)

    @property
    def id_set(self) -> str:
        for role in ("test", "val"):
            names = [s for s in self.metrics if self.roles.get(s, "test") == role]
            if names:
                return names[0]
        return next(iter(self.metrics))

    @property
    def ood_sets(self) -> list[str]:
        return [s for s in self.metrics if self.roles.get(s) == "ood"]

    @property
    def model_key(self) -> str:
        return f"{self.config.get('model')}/{self.config.get('pretrained')}"

    def point(self, model: str, ood: Sequence[str] | None = None) -> dict | None:
        """``{"id", "ood_mean", "sets": {set: top1}}`` of one model of the run (None if it was not
        evaluated on the ID set); ``sets`` holds the sets it was evaluated on (cache heads evaluated
        without OOD sets have the ID set only), and the OOD mean over ``ood`` (default: the run's OOD
        sets) is None unless it has every one of them."""
        if model not in self.metrics.get(self.id_set, {}):
            return None
        sets = {s: float(self.metrics[s][model]["top1"]) for s in self.metrics if model in self.metrics[s]}
        ood = self.ood_sets if ood is None else list(ood)
        return {
            "id": sets[self.id_set],
            "ood_mean": sum(sets[s] for s in ood) / len(ood) if ood and all(s in sets for s in ood) else None,
            "sets": sets,
        }

    def alphas(self) -> list[float]:
        models = next(iter(self.metrics.values()))
        return sorted(a for a in (model_alpha(m) for m in models) if a is not None)


@dataclass
class EpisodeRecord(_Keyed):
    """One meta-training run (`fdalign meta-train`): ``metrics[target][setting][model][head]`` = mean, ci95."""

    dir: Path
    dataset: str
    seed: int
    method: str
    metrics: dict
    config: dict = field(default_factory=dict)
    shots: int = 0  # the training episodes' K
    hashes: dict = field(default_factory=dict)
    base_method: str = ""


@dataclass
class Skipped:
    """A folder the report read and did not use: ``why`` in words (duplicate, failed, damaged ...)."""

    dir: Path
    key: str
    state: str
    why: str


def read_state(path: Path, what: str) -> dict:
    """A JSON mapping fdalign wrote; damaged (not JSON, not UTF-8, not a mapping) is an FDAlignError
    naming the file, so that one bad file stops only its own run."""
    from fdalign.io import read_json

    try:
        doc = read_json(path, what)
    except UnicodeDecodeError:
        raise FDAlignError(f"{what} {path} is not UTF-8 text") from None
    if not isinstance(doc, dict):
        raise FDAlignError(f"{what} {path} holds a JSON {type(doc).__name__}, not a mapping")
    return doc


def _read_run(run_dir: Path) -> RunRecord | EpisodeRecord | Skipped:
    status: dict = {}
    if (run_dir / STATUS_FILE).is_file():
        try:
            status = read_state(run_dir / STATUS_FILE, "run status")
        except FDAlignError as e:
            return Skipped(run_dir, "?", "damaged", f"{e}; delete the run folder to redo it")
        if status.get("state") != "done":
            return Skipped(run_dir, _status_key(status), str(status.get("state")), _status_error(status))
    try:
        doc = read_state(run_dir / "metrics.json", "run metrics")
        cfg, metrics = doc["config"], doc["metrics"]
        spec = status.get("run") or {}
        check_agreement(run_dir, cfg, spec)
        dataset = spec.get("dataset") or cfg.get("dataset_name") or Path(str(cfg.get("data"))).name
        method = spec.get("method") or method_label(cfg)
        if doc.get("kind") == "episodes":
            return EpisodeRecord(
                run_dir,
                dataset,
                int(spec.get("seed", cfg.get("seed"))),
                method,
                metrics,
                cfg,
                int(spec.get("shots", cfg.get("k_shot", 0))),
                doc.get("hashes", {}),
            )
        sel = doc.get("selection", {}).get("wiseft_alpha") or {}
        heads_file = run_dir / "eval-heads" / "metrics.json"  # `fdalign eval RUN --heads`, run by the sweep
        if heads_file.is_file():
            heads = read_state(heads_file, "cache-head metrics")["metrics"]
            metrics = {
                s: {**rows, **{f"head:{m}": v for m, v in heads.get(s, {}).items()}} for s, rows in metrics.items()
            }
        return RunRecord(
            dir=run_dir,
            dataset=dataset,
            shots=int(spec.get("shots", cfg.get("shots"))),
            seed=int(spec.get("seed", cfg.get("seed"))),
            method=method,
            metrics=metrics,
            roles=doc.get("roles", {}),
            chosen_alpha=float(sel["chosen"]) if "chosen" in sel else None,
            hashes=doc.get("hashes", {}),
            config=cfg,
            environment=status.get("environment", {}),
            val_top1=_selected_val_top1(doc),
            log=run_dir / "log.csv" if (run_dir / "log.csv").is_file() else None,
        )
    except FDAlignError as e:
        return Skipped(run_dir, "?", "damaged", str(e))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return Skipped(run_dir, "?", "damaged", f"{run_dir / 'metrics.json'} lacks what a run records ({e!r})")


# How a run ran, not what it is: a resume (or a moved folder) may write these differently into config.yaml
RUN_ONLY_FIELDS = frozenset({"out", "resume", "progress", "num_workers", "device", "eval_batch_size", "tensorboard"})


_KEY_FIELDS = ("dataset_name", "data", "shots", "k_shot", "seed", "model", "pretrained", "mode", "beta")


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def check_agreement(run_dir: Path, cfg: dict, spec: dict) -> None:
    """A run's ``config.yaml``, the config its ``metrics.json`` was computed with and the sweep cell it was run
    for (``status.json``) must agree: a metrics.json copied from another run (another data set, shots or model)
    is never reported under this run's name. A disagreement is an FDAlignError (the run is listed as damaged)."""
    from fdalign.options import read_yaml

    own = read_yaml(run_dir / "config.yaml", "run config")
    if not isinstance(own, dict) or not isinstance(cfg, dict):
        raise FDAlignError(f"{run_dir}: config.yaml or the config in metrics.json is not a mapping")
    diff = [k for k in sorted(set(own) & set(cfg) - RUN_ONLY_FIELDS) if _canonical(own[k]) != _canonical(cfg[k])]
    if diff:
        diff.sort(key=lambda k: (k not in _KEY_FIELDS, k))  # what the report keys a run by, first
        shown = ", ".join(f"{k} {own[k]!r} vs {cfg[k]!r}" for k in diff[:4]) + (" ..." if len(diff) > 4 else "")
        raise FDAlignError(
            f"{run_dir}: config.yaml and metrics.json disagree ({shown}): the metrics are not this run's; "
            "train the run again, or delete the folder"
        )
    shots = cfg.get("k_shot", cfg.get("shots"))
    for name, want in (("seed", cfg.get("seed")), ("shots", shots)):
        if name in spec and want is not None and _canonical(spec[name]) != _canonical(want):
            raise FDAlignError(
                f"{run_dir}: its sweep cell (status.json) is {name} {spec[name]!r} but its metrics.json says "
                f"{want!r}: the metrics are not this cell's; delete the folder and run the sweep again"
            )


def _selected_val_top1(doc: dict) -> float | None:
    """The val top-1 of the run's selected epoch, from metrics.json's train record (None if not recorded)."""
    t = doc.get("train") or {}
    hist, best = t.get("val_top1_per_epoch"), t.get("best_epoch")
    if not hist or not best or not 1 <= int(best) <= len(hist):
        return None
    return float(hist[int(best) - 1])


def _status_key(status: dict) -> str:
    run = status.get("run") or {}
    try:
        return f"{run['dataset']}/k{run['shots']}/s{run['seed']}/{run['method']}"
    except (KeyError, TypeError):
        return "?"


def _status_error(status: dict) -> str:
    state = status.get("state")
    if state == "failed":
        return str(status.get("error") or "failed (see its train.log)")
    if state in ("running", "interrupted"):
        return "not finished (killed or stopped); `fdalign sweep` again continues it"
    return f"state {state!r}"


def is_run_dir(d: Path) -> bool:
    return all((d / f).is_file() for f in RUN_FILES)


def run_dirs(root: Path) -> list[Path]:
    """Run folders under ``root`` (``root`` itself included), never descending into a run: its
    ``eval/`` and ``eval-heads/`` are evaluations of that run."""
    found: list[Path] = []
    for top, dirs, files in os.walk(root):
        d = Path(top)
        if "metrics.json" in files and "config.yaml" in files:
            found.append(d)
            dirs[:] = []
        elif STATUS_FILE in files:  # a sweep cell that never got as far as its metrics
            found.append(d)
            dirs[:] = []
        dirs.sort()
    return found


# ----------------------------------------------------------------------------------------------
# keys, settings, duplicates


def with_defaults(config: dict) -> dict:
    """A recorded run config with the fields added to TrainConfig (MetaConfig for episodes) since it was
    written filled in with their defaults: a default keeps what fdalign did before the field existed
    (``trainable: full``), so a run made by an older version is the same as one asking for the default."""
    from fdalign.workflows.parts import MetaConfig, TrainConfig

    fields = TrainConfig().to_dict()
    fields = fields if set(config) <= set(fields) else MetaConfig().to_dict()
    return {**{k: v for k, v in fields.items() if k not in config}, **config}


def settings(r: RunRecord | EpisodeRecord) -> dict:
    """What defines a run's numbers beyond its key: the config without paths and bookkeeping (a field the
    run predates read as its default: :func:`with_defaults`), and the hashes of its test and OOD sets (the
    train / val hashes change with the seed)."""
    d = {k: v for k, v in with_defaults(r.config).items() if k not in NOT_SETTINGS}
    d.update({f"{k} set": v for k, v in r.hashes.items() if k not in ("train", "val")})
    return d


def shared_settings(runs: list) -> dict:
    """The settings (:func:`settings`) every run has, with one value: what no table column shows."""
    per_run = [settings(r) for r in runs]
    if not per_run:
        return {}
    sig = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    return {k: v for k, v in sorted(per_run[0].items()) if all(k in s and sig(s[k]) == sig(v) for s in per_run[1:])}


def _fmt(v: Any) -> str:
    if isinstance(v, str) and ":" in v and len(v) > 20:  # a hash
        return v.rpartition(":")[2][:8]
    return json.dumps(v) if not isinstance(v, str) else v


def differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def suffix(fields: list[str], s: dict, limit: int = 3) -> str:
    parts = [f"{k}={_fmt(s.get(k))}" for k in fields[:limit]] + (["…"] if len(fields) > limit else [])
    return f"[{', '.join(parts)}]"


def separate(runs: list) -> tuple[list, list[Skipped], list[str]]:
    """Runs sharing data set, shots and method but not settings get a row of their own, named after
    the settings that differ from the first such run read; of two runs with the same key and settings
    the first read is used. Returns (used runs, duplicates, one note per renamed row)."""
    first: dict[tuple, dict] = {}
    labels: dict[tuple, dict[str, str]] = {}
    notes: list[str] = []
    used: dict[tuple, RunRecord] = {}
    dups: list[Skipped] = []
    for r in runs:
        cell = (r.dataset, r.shots, r.base_method)
        s = settings(r)
        sig = json.dumps(s, sort_keys=True, default=str)
        base = first.setdefault(cell, s)
        known = labels.setdefault(cell, {})
        if sig not in known:
            fields = differing(base, s)
            known[sig] = r.base_method if not fields else f"{r.base_method} {suffix(fields, s)}"
            if fields:
                notes.append(
                    f"{r.dataset}, {r.shots}-shot, {r.base_method}: runs with other settings than the first "
                    f"one read ({', '.join(fields)}) are kept apart as `{known[sig]}`"
                )
        r.method = known[sig]
        key = (r.dataset, r.shots, r.seed, r.method)
        if key in used:
            dups.append(Skipped(r.dir, r.key, "duplicate", f"same key and settings as {used[key].dir}, which is used"))
            continue
        used[key] = r
    return list(used.values()), dups, notes


# ----------------------------------------------------------------------------------------------
# sweeps: the grid, and which of its cells are missing


def sweep_cells(sweep_file: Path) -> list[tuple[str, Path]]:
    """``(key, run folder)`` of every cell a sweep planned (from its ``sweep.json``)."""
    doc = read_state(sweep_file, "sweep index")
    cells = []
    for rec in doc.get("runs") or []:
        if isinstance(rec, dict) and "key" in rec and "dir" in rec:
            cells.append((str(rec["key"]), sweep_file.parent / str(rec["dir"])))
    return cells


def missing_cells(sweeps: list[Path], runs: list[RunRecord], skipped: list[Skipped]) -> list[Skipped]:
    """Cells of the sweeps that gave no used run and are not already listed as skipped."""
    seen = {r.dir.resolve() for r in runs} | {s.dir.resolve() for s in skipped}
    out = []
    for f in sweeps:
        try:
            cells = sweep_cells(f)
        except FDAlignError as e:
            out.append(Skipped(f.parent, "?", "damaged", str(e)))
            continue
        for key, d in cells:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                out.append(Skipped(d, key, "not run", "no run folder yet; `fdalign sweep` again runs it"))
    return out


def find_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[RunRecord], dict]:
    """Every finished run under ``paths`` and the sweep settings found there (``wiseft``, ``reference``,
    method order), with what was not used (``meta["skipped"]``) and the rows kept apart
    (``meta["notes"]``)."""
    runs: list[RunRecord] = []
    meta: dict[str, Any] = {
        "wiseft": [],
        "reference": None,
        "methods": [],
        "names": [],
        "skipped": [],
        "notes": [],
        "sweeps": [],
        "overrides": {},  # sweep.json's `--set KEY=VALUE`, per sweep folder
        "val_choice": {},
    }
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FDAlignError(f"report input {p} does not exist; give sweep or run folders")
        for sweep_file in sorted(p.rglob("sweep.json")):
            try:
                cfg = read_state(sweep_file, "sweep index").get("config", {})
            except FDAlignError as e:
                meta["skipped"].append(Skipped(sweep_file.parent, "?", "damaged", str(e)))
                continue
            meta["sweeps"].append(sweep_file)
            meta["names"].append(cfg.get("name"))
            meta["methods"] += [m for m in cfg.get("methods", {}) if m not in meta["methods"]]
            wise = cfg.get("wiseft")
            if wise is None:
                wise = [m for m, o in cfg.get("methods", {}).items() if (o or {}).get("mode") != "linear-probe"]
            meta["wiseft"] += [m for m in wise if m not in meta["wiseft"]]
            meta["reference"] = meta["reference"] or cfg.get("reference")
            if cfg.get("overrides"):
                meta["overrides"][str(sweep_file.parent)] = dict(cfg["overrides"])
            for row, ms in (cfg.get("val_choice") or {}).items():
                meta["val_choice"].setdefault(row, list(ms))
        for d in run_dirs(p):
            if d.resolve() in seen:
                continue
            seen.add(d.resolve())
            r = _read_run(d)
            if isinstance(r, EpisodeRecord):
                meta.setdefault("episodes", []).append(r)
            elif isinstance(r, Skipped):
                meta["skipped"].append(r)
            else:
                runs.append(r)
    runs, dups, meta["notes"] = separate(runs)
    meta["skipped"] += dups
    if meta.get("episodes"):
        meta["episodes"], dups, notes = separate(meta["episodes"])
        meta["skipped"] += dups
        meta["notes"] += notes
    meta["skipped"] += missing_cells(meta["sweeps"], runs + meta.get("episodes", []), meta["skipped"])
    if not runs and meta.get("episodes"):
        return runs, meta
    if not runs:
        problems = "".join(f"; {s.dir}: {s.state}, {s.why}" for s in meta["skipped"][:3])
        raise FDAlignError(
            f"no finished training runs (metrics.json from fdalign train) under {', '.join(map(str, paths))}{problems}"
        )
    if not meta["methods"]:
        meta["methods"] = list(dict.fromkeys(r.base_method for r in runs))
        meta["wiseft"] = [m for m in meta["methods"] if m != "lp"]
    for r in runs:  # rows kept apart follow their method, and share its WiSE-FT row
        if r.method not in meta["methods"]:
            base = meta["methods"].index(r.base_method) if r.base_method in meta["methods"] else len(meta["methods"])
            later = [m for m in meta["methods"][base + 1 :] if m.startswith(f"{r.base_method} [")]
            meta["methods"].insert(base + 1 + len(later), r.method)
            if r.base_method in meta["wiseft"]:
                meta["wiseft"].append(r.method)
    if meta["reference"] is None and "fine-tune" in meta["methods"]:
        meta["reference"] = "fine-tune"
    return runs, meta


__all__ = [
    "RunRecord",
    "EpisodeRecord",
    "Skipped",
    "find_runs",
    "method_label",
    "model_alpha",
    "read_state",
    "settings",
    "shared_settings",
    "separate",
    "run_dirs",
]
