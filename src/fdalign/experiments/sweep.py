"""A grid of ``fdalign train`` runs (data sets x shots x seeds x methods), resumable.

A sweep config (YAML, see ``presets/*.yaml``) names the grid; every cell is one ordinary training
run in ``OUT/runs/<data set>/k<shots>/s<seed>/<method>/``, made by :func:`fdalign.workflows.finetune`
(what ``fdalign train`` calls) from the cell's TrainConfig, which the sweep also writes there as
``request.yaml``. So a sweep run is exactly what a user gets from ``fdalign train --config
OUT/runs/.../request.yaml``, which repeats it by hand.

Each run's settings are, lowest precedence first: :class:`TrainConfig` defaults, the ``released``
preset for the run's data set and shots (``preset: released``), the config's ``train:`` block,
the data set's ``train:`` block, the method's overrides, then the grid (data, OOD sets, shots,
seed, run directory).

Methods are trained runs (``fine-tune: {beta: 0}``, ``fd-align: {beta: 20}``, ``lp: {mode:
linear-probe}``, ...). Zero-shot CLIP and WiSE-FT are not runs of their own: every train run
already evaluates zero-shot CLIP and the WiSE-FT interpolations (mixing weight chosen on val), so
the report reads those rows from the runs' ``metrics.json``.

Bookkeeping: ``status.json`` in a run directory says running / done / failed. A done run is
skipped; a run with a checkpoint is continued with ``--resume``; a failed run is recorded (its
error in ``status.json``, its output in ``train.log``), the sweep goes on, and the next invocation
tries it again. ``OUT/sweep.json`` lists every run and its state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError, as_command
from fdalign.experiments.launchers import InProcess, Interrupted
from fdalign.io import atomic_write_json, read_json, shared_file_lock
from fdalign.options import check_keys, read_yaml

SWEEP_FORMAT = "fdalign-sweep/1"
SWEEP_LOCK = ".sweep.json.lock"  # held while sweep.json is read, merged and written (several sweep processes)
SWEEP_LOCK_TIMEOUT = 60.0
PRESET_DIR = Path(__file__).with_name("presets")
STATUS_FILE = "status.json"
REQUEST_FILE = "request.yaml"
# Set by the grid itself: a data set or method block may not set them.
PROTOCOLS = ("kshot", "episodes", "base2novel", "cross-dataset")  # the last two: experiments/protocols.py
GRID_FIELDS = ("shots", "seed", "out", "data", "ood", "resume", "image_root", "classnames")
# Fields that may change between a run and its continuation without changing its result.
VOLATILE_FIELDS = frozenset(
    {"progress", "num_workers", "eval_batch_size", "tensorboard", "logger", "device", "resume", "verify_images", "out"}
)


@dataclass
class DatasetSpec:
    """One data set of the grid. Paths may contain ``{data_root}``; ``ood: world`` means every OOD
    folder of a rendered world at ``data``."""

    name: str
    data: str
    ood: list[str] | str = field(default_factory=list)
    image_root: str | None = None
    classnames: str | None = None
    dataset_name: str | None = None  # for the released LR table and the published numbers; default: name
    train: dict[str, Any] = field(default_factory=dict)
    targets: list[str] | str = field(default_factory=list)  # protocol cross-dataset: NAME=PATH, or world


@dataclass
class SweepConfig:
    """A sweep: the grid and the shared settings. See ``presets/demo.yaml`` for an annotated example."""

    name: str
    datasets: list[DatasetSpec]
    shots: list[int]
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    description: str = ""
    preset: str | None = None  # "released": start every run from TrainConfig.released(data set, shots)
    train: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] | None = None  # render the embedded world into OUT/world first (RenderConfig fields)
    data_root: str | None = None
    wiseft: list[str] | None = None  # methods whose WiSE-FT rows the report shows (default: encoder-trained ones)
    reference: str = "fine-tune"  # the method paired differences are taken against
    # report rows chosen on val: {row: [methods]}; per seed, the listed method whose fine-tuned model scored
    # best on the few-shot val split gives the row (a method's strength, e.g. FD-Align's beta, tuned on val)
    val_choice: dict[str, list[str]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # applied last to every run (--set KEY=VALUE)
    keep_checkpoints: bool = True  # False: a finished run drops checkpoint/ (resume state), keeping model/
    heads: list[str] = field(default_factory=list)  # cache heads (tip, tip-f, ape, ape-t) fitted on every run
    heads_preset: str | None = None  # "authors": the heads' published settings (`fdalign eval --heads-preset`)
    feature_cache: bool = True  # share the frozen encoder's features across runs (OUT/cache/features)
    # share the decoded evaluation images (uint8, resized and cropped) across runs (OUT/cache/pixels, or
    # $FDALIGN_PIXEL_CACHE), least recently used entries deleted beyond pixel_cache_budget GB
    pixel_cache: bool = True
    pixel_cache_budget: float | None = None
    # kshot: every run is `fdalign train`; episodes: `fdalign meta-train` (shots = the training episodes' K,
    # a data set's `ood` = its cross-domain targets, `train` = MetaConfig options)
    # base2novel: every run trains on the base classes (--base-classes); cross-dataset: every run is scored on
    # its data set's targets (--target); see experiments/protocols.py
    protocol: str = "kshot"
    source: str = field(default="the sweep config", compare=False)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "the sweep config") -> SweepConfig:
        if not isinstance(d, dict):
            raise FDAlignError(f"{source} must be a mapping (name, datasets, shots, seeds, methods, ...)")
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        check_keys(d, names, source, "key", f"; known keys: {', '.join(sorted(names))}")
        missing = [k for k in ("name", "datasets", "shots", "seeds", "methods") if k not in d]
        if missing:
            raise FDAlignError(
                f"{source}: missing key {missing[0]!r} (a sweep needs name, datasets, shots, seeds, methods)"
            )
        ds_fields = {f.name for f in dataclasses.fields(DatasetSpec)}
        datasets = []
        for i, ds in enumerate(d["datasets"] or []):
            if not isinstance(ds, dict) or "name" not in ds or "data" not in ds:
                raise FDAlignError(f"{source}: datasets[{i}] needs at least 'name' and 'data'")
            check_keys(ds, ds_fields, f"{source}: datasets[{i}]", "key", f"; known: {', '.join(sorted(ds_fields))}")
            datasets.append(DatasetSpec(**{k: v for k, v in ds.items()}))
        cfg = cls(**{**{k: v for k, v in d.items() if k != "datasets"}, "datasets": datasets}, source=source)
        cfg.shots = _int_list(cfg.shots, "shots", source)
        cfg.seeds = _int_list(cfg.seeds, "seeds", source)
        return cfg.validate()

    def validate(self) -> SweepConfig:
        src = self.source
        if not self.datasets:
            raise FDAlignError(f"{src}: datasets is empty; list at least one (name, data)")
        if not self.methods or not isinstance(self.methods, dict):
            raise FDAlignError(f"{src}: methods must map a method name to its settings, e.g. fd-align: {{beta: 20}}")
        if self.preset not in (None, "released"):
            raise FDAlignError(f"{src}: preset {self.preset!r} is not known; use released or leave it out")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise FDAlignError(f"{src}: two data sets are named alike ({names}); names key the run folders")
        for where, block in (
            [("train", self.train)]
            + [(f"datasets.{d.name}.train", d.train) for d in self.datasets]
            + [(f"methods.{m}", o or {}) for m, o in self.methods.items()]
            + [("overrides", self.overrides)]
        ):
            if not isinstance(block, dict):
                raise FDAlignError(f"{src}: {where} must be a mapping of train options")
            grid = sorted(set(k.replace("-", "_") for k in block) & set(GRID_FIELDS))
            if grid:
                raise FDAlignError(
                    f"{src}: {where} sets {grid[0]!r}, which the sweep grid decides; set it in "
                    "datasets / shots / seeds instead"
                )
        if self.protocol not in PROTOCOLS:
            raise FDAlignError(f"{src}: protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        from fdalign.experiments.protocols import check_protocol

        check_protocol(self)
        if self.protocol == "episodes" and (self.preset or self.heads or self.world):
            raise FDAlignError(
                f"{src}: protocol episodes takes no preset, heads or world (meta-training has "
                "its own defaults, the authors' N-way K-shot setting)"
            )
        from fdalign.workflows.parts import HEAD_NAMES

        for h in self.heads:
            if h not in HEAD_NAMES or h == "zeroshot":
                raise FDAlignError(f"{src}: heads lists {h!r}; choose from {', '.join(HEAD_NAMES[1:])}")
        if self.heads_preset not in (None, "authors"):
            raise FDAlignError(f"{src}: heads_preset {self.heads_preset!r} is not known; use authors or leave it out")
        if not isinstance(self.val_choice, dict):
            raise FDAlignError(f"{src}: val_choice must map a row name to the methods it chooses among")
        for row, ms in self.val_choice.items():
            if row in self.methods or not isinstance(ms, list) or not ms:
                raise FDAlignError(f"{src}: val_choice {row!r} must be a new row name with a list of methods")
            for m in ms:
                if m not in self.methods:
                    raise FDAlignError(f"{src}: val_choice {row!r} lists {m!r}, which is not one of the methods")
        for m in self.wiseft or []:
            if m not in self.methods:
                raise FDAlignError(f"{src}: wiseft lists {m!r}, which is not one of the methods {list(self.methods)}")
        for name in list(names) + list(self.methods):
            if not name or "/" in name or name.startswith("."):
                raise FDAlignError(f"{src}: {name!r} cannot name a run folder; use letters, digits, - and _")
        return self

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SweepConfig:
        d = read_yaml(path, "sweep config", f"; give a YAML file or a preset name ({', '.join(preset_names())})")
        return cls.from_dict(d, source=f"sweep config {Path(path)}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def wiseft_methods(self) -> list[str]:
        if self.wiseft is not None:
            return list(self.wiseft)
        return [m for m, o in self.methods.items() if (o or {}).get("mode", "fdalign") != "linear-probe"]


def _int_list(v, name: str, source: str) -> list[int]:
    v = v if isinstance(v, list) else [v]
    if not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise FDAlignError(f"{source}: {name} must be a list of integers, got {v!r}")
    return list(v)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_sweep_config(name_or_path: str) -> SweepConfig:
    """A YAML file, or the name of a shipped preset (``demo``, ``imagenet``, ``coop``, ``spc-ablation``)."""
    p = Path(name_or_path)
    if not p.is_file() and (PRESET_DIR / f"{name_or_path}.yaml").is_file():
        p = PRESET_DIR / f"{name_or_path}.yaml"
    return SweepConfig.from_yaml(p)


# ----------------------------------------------------------------------------------------------
# the grid


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    dataset: str
    shots: int
    seed: int
    method: str

    @property
    def key(self) -> str:
        return f"{self.dataset}/k{self.shots}/s{self.seed}/{self.method}"

    def dir(self, out: str | os.PathLike) -> Path:
        return Path(out) / "runs" / self.dataset / f"k{self.shots}" / f"s{self.seed}" / self.method

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def plan_runs(cfg: SweepConfig, only: Sequence[str] = (), limit: int | None = None) -> list[RunSpec]:
    """Every run, data set-major; methods innermost so a seed's comparison finishes together.

    ``only``: shell patterns on the run key (``imagenet/k16/s1/*``); a run matching any is kept.
    ``limit``: the first N runs left. Both let a user try the whole chain on a few cells first.
    """
    import fnmatch

    runs = [RunSpec(d.name, k, s, m) for d in cfg.datasets for k in cfg.shots for s in cfg.seeds for m in cfg.methods]
    if only:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.key, pat) for pat in only)]
        if not runs:
            raise FDAlignError(
                f"{cfg.source}: --only {' '.join(only)} matches no run; keys look like "
                f"{RunSpec(cfg.datasets[0].name, cfg.shots[0], cfg.seeds[0], next(iter(cfg.methods))).key}"
            )
    if limit is not None:
        if limit < 1:
            raise FDAlignError(f"--limit {limit}: give a positive number of runs")
        runs = runs[:limit]
    return runs


# --set keys that change the grid itself rather than every run's options (see apply_overrides)
GRID_OVERRIDES = ("shots", "seeds")
# --set keys that are the sweep's own settings: the cache heads fitted after every run (a smoke run of the
# coop preset drops the authors' 10-view cache with --set heads_preset=null, or the heads with --set heads=[])
SWEEP_OVERRIDES = ("heads", "heads_preset")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` (VALUE read as YAML: ``epochs=1``, ``model_config=null``, ``shots=[1,4]``,
    ``world.test_per_class=4``) -> settings; :func:`apply_overrides` puts them in a config."""
    from fdalign.options import YAMLSyntaxError, load_yaml_text

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "seed":
            key = "seeds"
        if not sep or not key:
            raise FDAlignError(f"--set {item!r}: write KEY=VALUE, e.g. --set model=ViT-B-16 or --set epochs=1")
        if key in GRID_FIELDS and key not in GRID_OVERRIDES:
            raise FDAlignError(f"--set {key}: the sweep grid decides {key!r}; change the config instead")
        try:
            out[key] = load_yaml_text(value, f"--set {key}") if value.strip() else None
        except YAMLSyntaxError:
            out[key] = value
    return out


def apply_overrides(cfg: SweepConfig, overrides: dict[str, Any], source: str = "--set") -> SweepConfig:
    """``overrides`` into ``cfg``: ``shots`` / ``seeds`` replace the grid's lists, ``world.KEY`` a key of the
    world a preset renders (a smaller world for a quick try), ``heads`` / ``heads_preset`` the sweep's cache
    heads, anything else is a train option for every run."""
    rest = {}
    for key, value in overrides.items():
        if key in GRID_OVERRIDES:
            setattr(cfg, key, _int_list(value, key, source))
        elif key in SWEEP_OVERRIDES:
            setattr(cfg, key, [] if key == "heads" and value is None else value)
            if key == "heads" and not isinstance(cfg.heads, list):
                cfg.heads = [cfg.heads]
            config_file, cfg.source = cfg.source, f"{source} {key}"  # an error names --set, not the config
            try:
                cfg.validate()
            finally:
                cfg.source = config_file
        elif key.startswith("world."):
            if cfg.world is None:
                raise FDAlignError(f"{source} {key}: {cfg.source} renders no world")
            cfg.world = {**cfg.world, key.split(".", 1)[1]: value}
        else:
            rest[key] = value
    cfg.overrides = {**cfg.overrides, **rest}
    return cfg


def _fill(value: str | None, data_root: str | None, what: str, source: str) -> str | None:
    if value is None:
        return None
    if "{data_root}" in value:
        if data_root is None:
            raise FDAlignError(f"{source}: {what} uses {{data_root}}; pass --data-root DIR (or set data_root)")
        value = value.replace("{data_root}", str(data_root))
    return str(Path(value).expanduser().absolute())


def _fill_classnames(value: str | None, data_root: str | None, source: str) -> str | None:
    from fdalign.data.datasets import BUILTIN_CLASSNAMES

    if value == BUILTIN_CLASSNAMES:  # the built-in list, not a file in the working directory
        return value
    return _fill(value, data_root, "classnames", source)


def _ood_list(ds: DatasetSpec, data: str, data_root: str | None, source: str) -> list[str]:
    if ds.ood == "world":
        from fdalign.world.render import ood_args

        return ood_args(data)
    if isinstance(ds.ood, str):
        raise FDAlignError(f"{source}: datasets.{ds.name}.ood must be a list of NAME=PATH or 'world'")
    out = []
    for spec in ds.ood:
        if "=" not in str(spec):
            raise FDAlignError(f"{source}: datasets.{ds.name}.ood has {spec!r}; write NAME=PATH")
        name, path = str(spec).split("=", 1)
        out.append(f"{name}={_fill(path, data_root, f'datasets.{ds.name}.ood', source)}")
    return out


def _meta_run_config(cfg: SweepConfig, run: RunSpec, out: str | os.PathLike, data_root: str | None):
    """The :class:`~fdalign.train.meta.MetaConfig` of one run of an episodes sweep (validated)."""
    from fdalign.workflows.parts import MetaConfig

    ds = next(d for d in cfg.datasets if d.name == run.dataset)
    d = MetaConfig().to_dict()
    for block in (cfg.train, ds.train, cfg.methods[run.method] or {}, cfg.overrides):
        d.update({str(k).replace("-", "_"): v for k, v in block.items()})
    data = _fill(ds.data, data_root, f"datasets.{ds.name}.data", cfg.source)
    d.update(
        data=data,
        image_root=_fill(ds.image_root, data_root, "image_root", cfg.source),
        classnames=_fill_classnames(ds.classnames, data_root, cfg.source),
        target=_ood_list(ds, data, data_root, cfg.source),
        k_shot=run.shots,
        seed=run.seed,
        out=str(run.dir(out).absolute()),
        resume=False,
        progress=False,
    )
    return MetaConfig.from_dict(d, source=f"{cfg.source}, run {run.key}").validate()


def run_config(cfg: SweepConfig, run: RunSpec, out: str | os.PathLike, data_root: str | None = None):
    """The :class:`~fdalign.train.config.TrainConfig` of one run (validated); a MetaConfig for episodes."""
    from fdalign.workflows.parts import TrainConfig

    if cfg.protocol == "episodes":
        return _meta_run_config(cfg, run, out, data_root)
    ds = next(d for d in cfg.datasets if d.name == run.dataset)
    src = f"{cfg.source}, run {run.key}"
    base = TrainConfig.released(ds.dataset_name or ds.name, run.shots) if cfg.preset == "released" else TrainConfig()
    d = base.to_dict()
    for block in (cfg.train, ds.train, cfg.methods[run.method] or {}, cfg.overrides):
        d.update({str(k).replace("-", "_"): v for k, v in block.items()})
    data = _fill(ds.data, data_root, f"datasets.{ds.name}.data", cfg.source)
    d.update(
        data=data,
        image_root=_fill(ds.image_root, data_root, "image_root", cfg.source),
        classnames=_fill_classnames(ds.classnames, data_root, cfg.source),
        ood=_ood_list(ds, data, data_root, cfg.source),
        shots=run.shots,
        seed=run.seed,
        out=str(run.dir(out).absolute()),
        resume=False,
        progress=False,
    )
    from fdalign.experiments.protocols import run_fields

    d.update(run_fields(cfg, ds, data, lambda v, what: _fill(v, data_root, what, cfg.source)))
    d.setdefault("dataset_name", None)
    if not d.get("dataset_name"):
        d["dataset_name"] = ds.dataset_name or ds.name
    return TrainConfig.from_dict(d, source=src).validate(src)


def _semantic(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in VOLATILE_FIELDS}


def check_existing(run_dir: Path, request: dict) -> None:
    """Refuse to mix: an existing run made with other settings is an error, not silently reused."""
    p = run_dir / REQUEST_FILE
    if not p.is_file():
        return
    old = read_yaml(p, "run request") or {}
    from fdalign.experiments.runs import with_defaults

    a, b = _semantic(with_defaults(old)), _semantic(request)  # a field the run predates is its default
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise FDAlignError(
            f"{run_dir} was run with other settings ({', '.join(diff[:5])} differ from the sweep "
            "config); use a new --out, or delete that run folder to redo it"
        )


# ----------------------------------------------------------------------------------------------
# running


def run_state(run_dir: Path) -> str:
    """done / failed / interrupted / running (started, not finished: killed or in progress) / new, or
    damaged: a status.json that cannot be read (:func:`damaged_status` says why), which stops only
    its own run, never the sweep."""
    st = run_dir / STATUS_FILE
    if not st.is_file():
        return "new"
    if damaged_status(run_dir):
        return "damaged"
    state = read_json(st, "run status").get("state", "new")
    if state == "done" and not (run_dir / "metrics.json").is_file():
        return "running"
    return state


def damaged_status(run_dir: Path) -> str | None:
    """Why ``run_dir/status.json`` cannot be trusted (not UTF-8, not JSON, not a mapping), with the fix;
    None when it reads (or is absent)."""
    from fdalign.experiments.runs import read_state

    if not (run_dir / STATUS_FILE).is_file():
        return None
    try:
        read_state(run_dir / STATUS_FILE, "run status")
    except FDAlignError as e:
        return f"{e}; delete the run folder {run_dir} to redo the run"
    return None


def environment() -> dict:
    """Versions and the device, recorded with every run."""
    import platform

    import torch

    from fdalign import __version__

    env = {
        "fdalign": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    from importlib.metadata import PackageNotFoundError, version

    for name, dist in (("open_clip", "open_clip_torch"), ("transformers", "transformers")):
        try:  # the version without importing the package (transformers takes seconds to import)
            env[name] = version(dist)
        except PackageNotFoundError:
            pass
    return env


def _last_error(log_path: Path) -> str:
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.is_file() else []
    errs = [ln for ln in lines if ": error: " in ln]
    return (errs[-1] if errs else (lines[-1] if lines else "no output")).strip()


HEADS_DIR = "eval-heads"  # where a run's cache-head evaluation (`fdalign eval RUN --heads`) is written


FEATURE_CACHE_DIR = "cache/features"  # OUT/cache/features: the frozen encoders' features, shared by the runs
PIXEL_CACHE_DIR = "cache/pixels"  # OUT/cache/pixels: the evaluation images, decoded once for the runs


@dataclass
class Cell:
    """One cell as a launcher hands it to a worker (picklable: a local process or a Slurm array task)."""

    run: RunSpec
    config: Any  # the cell's TrainConfig / MetaConfig
    out: str
    env: dict
    keep_checkpoints: bool = True
    heads: tuple = ()
    heads_preset: str | None = None
    feature_cache: str | None = None  # folder of the feature cache, None: off
    pixel_cache: str | None = None  # folder of the pixel cache, None: off
    pixel_cache_budget: float | None = None  # GB


def run_cell(cell: Cell) -> dict:
    """Claim the cell (its run directory's :func:`fdalign.io.run_lock`, owner host + pid) and run it.

    Returns its status record plus ``worker`` (host:pid), ``busy`` seconds and the feature ``cache``
    counts. A cell another live process holds is ``claimed`` (not run); one found done once claimed
    (another process finished it meanwhile) is ``done`` with ``skipped: True``; a lock left by a dead
    process is taken over, and ``takeover`` says so."""
    import socket
    import warnings

    from fdalign.io import RunLockedError, run_lock
    from fdalign.workflows.parts import featcache, pixelcache

    out, t0 = Path(cell.out), time.time()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    run_dir = cell.run.dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                stack.enter_context(run_lock(run_dir, "sweep cell"))
        except RunLockedError as e:
            return {"state": "claimed", "error": str(e), "worker": worker, "busy": 0.0}
        takeover = [str(w.message) for w in caught if "taking over" in str(w.message)]
        if run_state(run_dir) == "done":
            return {"state": "done", "skipped": True, "worker": worker, "busy": 0.0}
        if run_state(run_dir) == "new" and (run_dir / "metrics.json").is_file():
            # trained outside the sweep from its request.yaml (e.g. torchrun in a job of its own): done. A
            # request with other settings was refused when planning (check_existing); without one, nothing
            # says the run is this cell's, so it is neither used nor overwritten
            if not (run_dir / REQUEST_FILE).is_file():
                return {
                    "run": cell.run.to_json(),
                    "state": "failed",
                    "worker": worker,
                    "busy": 0.0,
                    "error": f"{run_dir} holds a run trained outside the sweep without the {REQUEST_FILE} "
                    "it was trained from, so it may not be this cell's; move it away (or delete "
                    "it) and run the sweep again",
                }
            status = {
                "run": cell.run.to_json(),
                "state": "done",
                "outside": "trained outside the sweep",
                "started": t0,
                "environment": cell.env,
            }
            atomic_write_json(run_dir / STATUS_FILE, status)
            return {**status, "skipped": True, "worker": worker, "busy": 0.0}
        cache = stack.enter_context(featcache.enabled(cell.feature_cache))
        pixels = stack.enter_context(pixelcache.enabled(cell.pixel_cache, cell.pixel_cache_budget))
        status = execute_run(cell.run, cell.config, out, cell.env, cell.keep_checkpoints, cell.heads, cell.heads_preset)
        status = dict(status, worker=worker, busy=round(time.time() - t0, 2))
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:  # the worker's pinned device(s)
            status["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        if cache is not None:
            status["cache"] = cache.stats.to_json()
        if pixels is not None:
            status["pixel_cache"] = pixels.stats.to_json()
        if takeover:
            status["takeover"] = takeover[0]
        atomic_write_json(run_dir / STATUS_FILE, status)  # what a Slurm task did is read back from here
    return status


def execute_run(
    run: RunSpec,
    train_cfg,
    out: Path,
    env: dict,
    keep_checkpoints: bool = True,
    heads: Sequence[str] = (),
    heads_preset: str | None = None,
) -> dict:
    """One run through the library (:func:`fdalign.workflows.finetune`, or ``meta_train`` for a
    MetaConfig), then its cache heads (:func:`fdalign.workflows.evaluate`) when ``heads`` are asked
    for; returns the status record (also written to ``status.json``). A run is done when both are."""
    run_dir = run.dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    request = run_dir / REQUEST_FILE
    train_cfg.to_yaml(request)
    resume = (run_dir / "checkpoint" / "last.json").is_file()
    status = {"run": run.to_json(), "state": "running", "resumed": resume, "started": time.time(), "environment": env}
    atomic_write_json(run_dir / STATUS_FILE, status)
    t0 = time.time()
    log_path = run_dir / "train.log"
    rc, error = 1, None
    with log_path.open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            rc = _train_cell(train_cfg, resume, request)
            if rc == 0 and heads:
                rc = _heads_cell(run_dir, heads, train_cfg.device, heads_preset)
        except Exception as e:  # a bug or an unexpected failure: recorded, the sweep goes on
            traceback.print_exc(file=log)
            error = f"{type(e).__name__}: {e}"
    if rc == 130:
        status.update(state="interrupted", seconds=round(time.time() - t0, 1))
        atomic_write_json(run_dir / STATUS_FILE, status)
        raise Interrupted(run.key)
    ok = rc == 0 and error is None and (run_dir / "metrics.json").is_file()
    if ok and not keep_checkpoints:
        import shutil

        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    status.update(state="done" if ok else "failed", seconds=round(time.time() - t0, 1), returncode=rc)
    if not ok:
        status["error"] = error or _last_error(log_path)
    atomic_write_json(run_dir / STATUS_FILE, status)
    return status


def _train_cell(train_cfg, resume: bool, request: Path) -> int:
    """Train one cell (as ``fdalign train --config request.yaml [--resume]`` would, which repeats it by hand)."""
    from fdalign.workflows import finetune, meta_train

    meta = type(train_cfg).__name__ == "MetaConfig"
    command = "meta-train" if meta else "train"
    print(f"$ fdalign {command} --config {request}" + (" --resume" if resume else ""), flush=True)
    cfg = dataclasses.replace(train_cfg, resume=resume)
    return as_command(command, lambda: _say_done(meta_train(cfg) if meta else finetune(cfg)))


def _heads_cell(run_dir: Path, heads: Sequence[str], device: str, preset: str | None = None) -> int:
    """The cache heads of a finished run, as ``fdalign eval RUN --heads ... --out RUN/eval-heads``."""
    from fdalign.workflows import evaluate

    print(
        f"$ fdalign eval {run_dir} --heads {','.join(heads)} --out {run_dir / HEADS_DIR} --device {device} "
        "--no-progress" + (f" --heads-preset {preset}" if preset else ""),
        flush=True,
    )
    return as_command(
        "eval",
        lambda: _say_done(
            evaluate(
                str(run_dir),
                heads=list(heads),
                out=str(run_dir / HEADS_DIR),
                device=device,
                no_progress=True,
                heads_preset=preset,
            )
        ),
    )


def _say_done(result) -> None:
    print(f"done: {result.out}", flush=True)


def check_options(cfg: SweepConfig) -> None:
    """Every option of the train / data set / method blocks is one the runs' config knows, with a value
    of its type: a typo is an error naming the block and the key, before anything runs."""
    from fdalign.workflows.parts import MetaConfig, TrainConfig

    cls = MetaConfig if cfg.protocol == "episodes" else TrainConfig
    blocks = (
        [("train", cfg.train)]
        + [(f"datasets.{d.name}.train", d.train) for d in cfg.datasets]
        + [(f"methods.{m}", o or {}) for m, o in cfg.methods.items()]
        + [("--set", cfg.overrides)]
    )
    for where, block in blocks:
        cls.from_dict(dict(block), source=f"{cfg.source}: {where}")


def preview(
    cfg: SweepConfig,
    out: str | os.PathLike,
    data_root: str | None = None,
    only: Sequence[str] = (),
    limit: int | None = None,
) -> list[tuple[RunSpec, str, str]]:
    """What ``fdalign sweep --dry-run`` shows: ``(run, state, note)`` per run, trained nothing. The
    options are checked as the real run checks them; a run on disk made with other settings is
    ``refused`` (the real run would stop on it), and a damaged status.json is ``damaged``."""
    out = Path(out)
    check_options(cfg)
    world = cfg.world is not None and not data_root
    data_root = data_root or (str(out / "world") if cfg.world is not None else None)
    data_root = data_root or (cfg.data_root and str(Path(cfg.data_root).expanduser()))
    # a world still to be rendered has no manifest to build the runs' OOD sets from: nothing ran yet there
    build = not world or (out / "world" / "world.json").is_file()
    rows = []
    for r in plan_runs(cfg, only, limit):
        state, note = run_state(r.dir(out)), ""
        if state == "damaged":
            note = damaged_status(r.dir(out)) or ""
        elif build and r.dir(out).exists():  # only a run on disk can be refused for other settings
            request = run_config(cfg, r, out, data_root).to_dict()  # a bad value stops the real run too
            try:
                check_existing(r.dir(out), request)
            except FDAlignError as e:
                state, note = "refused", str(e)
        rows.append((r, state, note))
    return rows


@dataclass
class SweepResult:
    out: Path
    runs: list[dict]  # {key, dir, state, seconds?, error?} per run, in grid order
    executed: int
    skipped: int
    failed: int
    seconds: float
    cost: dict = field(default_factory=dict)  # as in sweep.json: wall time, busy time per worker, cache hits


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def render_world_for(cfg: SweepConfig, out: Path, progress: bool) -> Path:
    from fdalign.world.render import RenderConfig, render_world

    known = {f.name for f in dataclasses.fields(RenderConfig)}
    bad = sorted(set(cfg.world) - known)
    if bad:
        raise FDAlignError(f"{cfg.source}: world has unknown key {bad[0]!r}; known: {', '.join(sorted(known))}")
    w = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.world.items()}
    render_world(RenderConfig(**w, progress=progress), out / "world")
    return out / "world"


def _pixel_cache_dir(cfg: SweepConfig, out: Path, on: bool | None) -> str | None:
    """``$FDALIGN_PIXEL_CACHE`` (shared by sweeps), else OUT/cache/pixels; None when switched off."""
    from fdalign.workflows.parts import pixelcache

    if not (cfg.pixel_cache if on is None else on):
        return None
    return os.environ.get(pixelcache.ENV) or str(out / PIXEL_CACHE_DIR)


def run_sweep(
    cfg: SweepConfig,
    out: str | os.PathLike,
    data_root: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    launcher=None,
    feature_cache: bool | None = None,
    only: Sequence[str] = (),
    limit: int | None = None,
    pixel_cache: bool | None = None,
    pixel_cache_budget: float | None = None,
) -> SweepResult:
    """Run (or continue) every run of ``cfg`` into ``out``; see the module docstring.

    ``launcher`` places the cells (:mod:`fdalign.experiments.launchers`; default: this process, one
    after another); ``feature_cache`` (default: the config's) shares the frozen encoder's features."""
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or _tqdm_say
    launcher = launcher or InProcess()
    if cfg.world is not None:
        world = render_world_for(cfg, out, progress)
        data_root = data_root or str(world)
    data_root = data_root or (cfg.data_root and str(Path(cfg.data_root).expanduser()))
    runs = plan_runs(cfg, only, limit)
    # every run's settings are built (and checked against what is on disk) before anything trains
    configs = {r: run_config(cfg, r, out, data_root) for r in runs}
    for r, c in configs.items():
        check_existing(r.dir(out), c.to_dict())
    records = {r: {"key": r.key, "dir": str(r.dir(out).relative_to(out)), **_recorded(r.dir(out))} for r in runs}
    book = _Book(out, cfg, data_root, runs, records, t_start, type(launcher).__name__, launcher.slots)
    for r in runs:  # a damaged status.json fails its own run, with the fix, and the others go on
        if records[r]["state"] == "damaged":
            records[r]["error"] = damaged_status(r.dir(out))
            say(f"{r.key}: not run: {records[r]['error']}")
    book.save()
    todo = [r for r in runs if records[r]["state"] not in ("done", "damaged")]
    live = launcher.live([r.key for r in todo]) if hasattr(launcher, "live") else set()
    for r in todo:
        if r.key in live:
            records[r]["state"] = "submitted"
            say(f"{r.key}: its job is still queued or running: not submitted again")
    todo = [r for r in todo if r.key not in live]
    damaged = sum(records[r]["state"] == "damaged" for r in runs)
    skipped = len(runs) - len(todo) - damaged - len(live)
    if skipped:
        say(f"{skipped} of {len(runs)} runs already done in {out}: skipped")
    use_cache = cfg.feature_cache if feature_cache is None else feature_cache
    pixels = _pixel_cache_dir(cfg, out, pixel_cache)
    budget = cfg.pixel_cache_budget if pixel_cache_budget is None else pixel_cache_budget
    env = environment() if todo else {}
    cells = [
        Cell(
            r,
            _pinned(configs[r], launcher),
            str(out),
            env,
            cfg.keep_checkpoints,
            tuple(cfg.heads),
            cfg.heads_preset,
            str(out / FEATURE_CACHE_DIR) if use_cache else None,
            pixels,
            budget,
        )
        for r in todo
    ]
    progress_line = _Progress(cfg, runs, skipped, len(todo), launcher.slots, progress, say)

    def on_start(slot: int, cell: Cell) -> None:
        book.mine.add(cell.run)
        was = records[cell.run]["state"]
        records[cell.run]["state"] = "running"  # sweep.json tells the truth even if the process dies here
        progress_line.start(slot, cell.run, was)
        book.save()

    def on_end(slot: int, cell: Cell, status: dict) -> None:
        rec = records[cell.run]
        if status["state"] == "claimed" or status.get("skipped"):
            # another sweep process holds it or ran it: its record is what that process wrote, not this
            # worker's zero busy time (which would hide the other's in sweep.json)
            book.mine.discard(cell.run)
            for k in RECORD_KEYS:
                rec.pop(k, None)
            rec.update(_recorded(cell.run.dir(out)))
        else:
            for k in ("error", "skipped", "takeover"):
                rec.pop(k, None)
            rec.update({k: status[k] for k in RECORD_KEYS if k in status})
        progress_line.end(slot, cell.run, status, cell.run.dir(out))
        book.save()

    try:
        launcher.run(run_cell, cells, on_start, on_end)
    except BaseException as e:  # Ctrl-C or a crash: the index says what the runs' own status.json says
        for r in todo:
            if records[r]["state"] == "running":
                records[r].update(_recorded(r.dir(out)))
        book.save()
        if isinstance(e, Interrupted):
            raise KeyboardInterrupt from None
        raise
    finally:
        progress_line.close()
    for r in todo:
        if records[r]["state"] == "running":
            if not getattr(launcher, "wait", True):  # handed to Slurm: the next call reads what the jobs did
                records[r]["state"] = "submitted"
            else:  # claimed by another sweep process: what it has done by now
                records[r].update(_recorded(r.dir(out)))
    book.save()
    failed = damaged + sum(records[r]["state"] == "failed" for r in todo)
    return SweepResult(
        out=out,
        runs=[records[r] for r in runs],
        executed=progress_line.executed,
        skipped=skipped,
        failed=failed,
        seconds=time.time() - t_start,
        cost=book.cost(),
    )


RECORD_KEYS = ("state", "seconds", "error", "worker", "busy", "cache", "skipped", "takeover", "pixel_cache")


def _tqdm_say(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stdout)


def _recorded(run_dir: Path) -> dict:
    """A run's record from its status.json: its state, and its cost when it ran."""
    state = run_state(run_dir)
    rec = {"state": state}
    if state in ("done", "failed"):
        st = read_json(run_dir / STATUS_FILE, "run status")
        rec.update({k: st[k] for k in RECORD_KEYS[1:] if k in st and k != "skipped"})
    elif state == "damaged":
        rec["error"] = damaged_status(run_dir)
    return rec


def _pinned(train_cfg, launcher):
    """A worker pinned to a device (CUDA_VISIBLE_DEVICES) sees it as cuda:0: ``cuda:N`` becomes ``cuda``."""
    if getattr(launcher, "devices", None) and str(train_cfg.device).startswith("cuda:"):
        return dataclasses.replace(train_cfg, device="cuda")
    return train_cfg


class _Book:
    """``OUT/sweep.json``: the runs and their states, and the cost: wall time per invocation, busy time
    per worker, feature-cache hits and the encoder time they saved (summed over the runs' status.json)."""

    def __init__(self, out: Path, cfg: SweepConfig, data_root, runs, records, t_start, launcher: str, slots: int):
        self.out, self.cfg, self.data_root, self.runs, self.records = out, cfg, data_root, runs, records
        self.t_start, self.launcher, self.slots = t_start, launcher, slots
        # this invocation, among the others that share sweep.json (two sweeps on one folder)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{t_start:.6f}"
        self.mine: set = set()  # the runs this invocation ran: their records are its own
        self.previous = self._invocations(self._read())

    def _read(self) -> dict:
        try:
            doc = read_json(self.out / "sweep.json", "sweep index") if (self.out / "sweep.json").is_file() else {}
        except FDAlignError:
            doc = {}
        return doc if isinstance(doc, dict) else {}

    def _invocations(self, doc: dict) -> list[dict]:
        found = (doc.get("cost") or {}).get("invocations", []) if isinstance(doc.get("cost"), dict) else []
        return [i for i in found if isinstance(i, dict) and i.get("id") != self.id]

    def _merge(self, doc: dict) -> None:
        """Take in what another sweep process wrote to sweep.json since this one last did: the other
        invocations, and the state of every run this one did not run (read from the run's own status.json)."""
        if doc.get("writer") in (None, self.id):
            return
        self.previous = self._invocations(doc)
        theirs = {r.get("key"): r for r in doc.get("runs", []) if isinstance(r, dict)}
        for r in self.runs:
            if r not in self.mine and theirs.get(r.key, self.records[r]) != self.records[r]:
                rec = self.records[r]
                for k in RECORD_KEYS:
                    rec.pop(k, None)
                rec.update(_recorded(r.dir(self.out)))

    def cost(self) -> dict:
        busy: dict[str, float] = {}
        cache = {"hits": 0, "misses": 0, "corrupt": 0, "seconds_saved": 0.0}
        passes: dict[str, int] = {}  # encoder passes the cache computed, per evaluated set
        pixels = {"hits": 0, "misses": 0, "corrupt": 0, "evicted": 0, "bytes_read": 0, "bytes_written": 0}
        pixels_saved = 0.0
        for rec in self.records.values():
            if rec.get("worker") and rec.get("busy") is not None:
                busy[rec["worker"]] = round(busy.get(rec["worker"], 0.0) + float(rec["busy"]), 2)
            for k in cache:
                cache[k] += (rec.get("cache") or {}).get(k, 0)
            for name, n in ((rec.get("cache") or {}).get("passes") or {}).items():
                passes[name] = passes.get(name, 0) + int(n)
            for k in pixels:
                pixels[k] += int((rec.get("pixel_cache") or {}).get(k, 0))
            pixels_saved += float((rec.get("pixel_cache") or {}).get("seconds_saved", 0.0))
        cache["passes"] = passes
        cache["seconds_saved"] = round(cache["seconds_saved"], 2)
        now = {
            "id": self.id,
            "started": round(self.t_start, 1),
            "wall_seconds": round(time.time() - self.t_start, 1),
            "launcher": self.launcher,
            "workers": self.slots,
        }
        invocations = self.previous + [now]
        return {
            "wall_seconds": round(sum(float(i.get("wall_seconds", 0)) for i in invocations), 1),
            "busy_seconds": busy,
            "cache": cache,
            "pixel_cache": {**pixels, "seconds_saved": round(pixels_saved, 2)},
            "invocations": invocations,
        }

    def save(self) -> None:
        """Write sweep.json under its lock, merged with what another sweep process on this folder wrote."""
        with shared_file_lock(self.out / SWEEP_LOCK, f"sweep index {self.out / 'sweep.json'}", SWEEP_LOCK_TIMEOUT):
            self._merge(self._read())
            atomic_write_json(
                self.out / "sweep.json",
                {
                    "format": SWEEP_FORMAT,
                    "config": self.cfg.to_dict(),
                    "data_root": self.data_root,
                    "runs": [self.records[r] for r in self.runs],
                    "cost": self.cost(),
                    "writer": self.id,
                },
            )


class _Progress:
    """The sweep's progress bar and lines: every busy worker's cell, runs left and the ETA."""

    def __init__(self, cfg, runs, skipped: int, todo: int, slots: int, progress: bool, say):
        from tqdm.auto import tqdm

        self.n, self.done, self.todo, self.slots, self.say = len(runs), skipped, todo, max(1, slots), say
        self.busy: dict[int, str] = {}
        self.durations: list[float] = []
        self.executed = 0  # cells this process ran (not those another process held or had done)
        self.handled = 0
        self.bar = tqdm(
            total=len(runs),
            initial=skipped,
            desc=f"sweep {cfg.name}",
            unit="run",
            disable=not progress,
            dynamic_ncols=True,
        )

    def _left(self) -> int:
        return self.todo - self.handled

    def _eta(self, left: int) -> str:
        if not self.durations or left <= 0:
            return ""
        return f", ETA {_fmt_eta(sum(self.durations) / len(self.durations) * left / self.slots)}"

    def _postfix(self) -> None:
        workers = (
            " | ".join(f"w{s}: {k}" for s, k in sorted(self.busy.items()))
            if self.slots > 1
            else next(iter(self.busy.values()), "")
        )
        self.bar.set_postfix_str(f"{workers}; {self._left()} left{self._eta(self._left())}")

    def start(self, slot: int, run: RunSpec, was: str) -> None:
        self.busy[slot] = run.key
        self._postfix()
        verb = "resuming" if was in ("running", "interrupted") else "retrying" if was == "failed" else "starting"
        where = f" (worker {slot})" if self.slots > 1 else ""
        self.say(f"[{self.done + len(self.busy)}/{self.n}] {run.key}: {verb}{where}")

    def end(self, slot: int, run: RunSpec, status: dict, run_dir: Path) -> None:
        self.busy.pop(slot, None)
        self.handled += 1
        self.executed += not (status["state"] == "claimed" or status.get("skipped"))  # run here, now
        self.done += 1
        if status.get("takeover"):
            self.say(f"    {status['takeover']}")
        state = status["state"]
        if state == "claimed":
            self.say(f"    {run.key}: not run here: {status['error']}")
        elif status.get("skipped"):
            self.say(f"    {run.key}: already done by another process: skipped")
        elif state == "failed":
            self.say(
                f"    {run.key} failed after {status.get('seconds', 0):.0f} s: {status.get('error')} "
                f"(see {run_dir / 'train.log'})"
            )
        elif "seconds" in status:
            self.durations.append(status["seconds"])
            left = self._left()
            self.say(f"    {run.key} done in {status['seconds']:.0f} s; {left} left{self._eta(left)}")
        self.bar.update(1)
        self._postfix()

    def close(self) -> None:
        self.bar.close()


__all__ = [
    "SweepConfig",
    "DatasetSpec",
    "RunSpec",
    "SweepResult",
    "load_sweep_config",
    "plan_runs",
    "run_config",
    "run_sweep",
    "run_state",
    "run_cell",
    "Cell",
    "preset_names",
    "environment",
    "preview",
    "check_options",
    "damaged_status",
    "parse_overrides",
    "apply_overrides",
]
