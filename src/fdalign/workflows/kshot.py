"""``fdalign.finetune``: the K-shot experiment of ``fdalign train`` as one function.

Data, model, prototypes, training, WiSE-FT, evaluation on test and OOD, and the run directory
(config.yaml, splits/, hashes.json, log.csv, checkpoint/, model/, selection.json, metrics.json,
report.md). The CLI parses flags into a :class:`~fdalign.train.config.TrainConfig` and prints
what this returns; a sweep cell builds the config itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdalign.errors import _ON_COMMAND_LINE, FDAlignError, option

if TYPE_CHECKING:
    from fdalign.train.config import TrainConfig

if TYPE_CHECKING:
    from fdalign.train.config import TrainConfig

NO_TEST = (
    "no test accuracy exists: {data} has no test split, and the val split chose the epoch and the WiSE-FT "
    "weight, so it is not reported as one. Give data with a test split (for the authors' index files: "
    "--split-file split_zhou_<Name>.json)"
)


def selected_row(alpha: float | None) -> str:
    """The row name of the WiSE-FT weight val chose: zero-shot (0), fine-tuned (1 or none), wiseft-<alpha>."""
    from fdalign.train.wiseft import alpha_name

    if alpha is None or float(alpha) == 1.0:
        return "fine-tuned"
    return "zero-shot" if float(alpha) == 0.0 else alpha_name(float(alpha))


@dataclass
class Run:
    """A finished K-shot run: what ``fdalign train`` wrote to ``out``, and the models in memory.

    ``metrics`` is ``{set: {row: {"top1", "top5", "n"}}}`` (sets: test, the OOD sets, ...; rows:
    zero-shot, fine-tuned and wiseft-<alpha>). ``encoder`` / ``head`` are *the selected model*: the
    WiSE-FT mix chosen on val (``wiseft_alpha``; alpha 0 is the zero-shot CLIP, 1 the fine-tuned
    one), as ``export`` and ``predict`` give it by default; ``head(encoder(images))`` gives logits
    ``[B, C]`` over ``classnames``. ``fine_tuned_encoder`` / ``fine_tuned_head`` are the selected
    epoch's fine-tuned weights whatever the mix. ``preprocess`` turns a PIL image into the encoder's input.
    """

    out: Path
    config: Any  # the resolved TrainConfig (as config.yaml)
    metrics: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    best_epoch: int | None = None
    best_val_top1: float | None = None
    wiseft_alpha: float | None = None
    encoder: Any = None
    head: Any = None
    fine_tuned_encoder: Any = None
    fine_tuned_head: Any = None
    classnames: list = field(default_factory=list)
    preprocess: Any = None
    models: dict = field(default_factory=dict)  # {row name: (encoder, head)}, every evaluated row
    notes: list = field(default_factory=list)  # what report.md says beside the tables (e.g. alpha 0 = zero-shot)
    text_head: Any = field(default=None, repr=False)  # FLYP / CLIP-LoRA: (row, classnames) -> that row's head

    @property
    def paths(self) -> dict[str, Path]:
        names = {
            "config": "config.yaml",
            "metrics": "metrics.json",
            "report": "report.md",
            "log": "log.csv",
            "model": "model/best.safetensors",
            "selection": "selection.json",
            "hashes": "hashes.json",
        }
        return {k: self.out / v for k, v in names.items()}


def check_run_request(cfg, has_model: bool = False) -> None:
    """What every training workflow needs before it reads data: data, out, a model, and an out that
    is not already a run unless resume is set (``cfg``: a TrainConfig or MetaConfig)."""
    where = "on the command line or in the --config file" if _ON_COMMAND_LINE.get() else "in the config"
    for name in ("data", "out"):
        if not getattr(cfg, name):
            raise FDAlignError(f"{option(name)} is required ({where})")
    if not cfg.model and not cfg.model_config and not has_model:
        raise FDAlignError(
            f"{option('model')} is required (an open_clip name, 'hf:<repo or dir>', or with "
            f"{option('model_config')}; from Python also finetune(config, model=<your CLIP>))"
        )
    if (Path(cfg.out) / "checkpoint" / "last.json").is_file() and not cfg.resume:
        raise FDAlignError(
            f"{cfg.out} already holds a training run; pass {option('resume', 'True')} to continue it or choose "
            f"a new {option('out')}"
        )


def index_file_of(data, shots=None):
    """The authors' index file given as ``data`` (its K and seed), or None; ``shots``, if given, must be its K."""
    from fdalign.data.fewshot import index_file_info

    info = index_file_info(data) if data else None
    if info is not None and shots is not None and int(shots) != info.shots:
        raise FDAlignError(
            f"--shots {shots} disagrees with the index file {data}, which holds {info.shots} images per class; "
            f"K is taken from the file: drop --shots, or pass the shot_{shots}-seed_S.json file"
        )
    return info


def finetune(config: TrainConfig | Mapping[str, Any], *, model: Any = None, callbacks: Sequence[Any] = ()) -> Run:
    """Run ``fdalign train`` with ``config`` and return the :class:`Run`.

    Args:
        config: a :class:`~fdalign.train.config.TrainConfig`, or a mapping of its fields (as in a YAML file).
        model: a CLIP you built already, used instead of ``config.model``: an open_clip
            ``(model, tokenizer, preprocess)``, a Hugging Face ``(CLIPModel, processor)``, or any
            object with ``encode_image``, ``encode_text``, ``tokenize``, ``logit_scale`` and
            ``preprocess`` (:class:`fdalign.backends.custom.CLIPLike`). A copy is trained (``run.encoder``);
            the object passed in is left as it was.
        callbacks: objects with ``on_step(metrics)``, ``on_epoch_end(metrics)`` and ``on_end(run)``
            (:mod:`fdalign.callbacks`), called besides the loggers of ``config.logger``.
    """
    import dataclasses

    from fdalign.callbacks import CallbackList
    from fdalign.data.names import guess_dataset_name

    cfg = dataclasses.replace(as_train_config(config))
    cfg.validate("the config")
    CallbackList(callbacks)  # a callback without any hook fails now, not after the first epoch
    _logger_names(cfg)  # a logger whose library is missing fails before any data is read
    backend = None
    if model is not None:
        import copy

        from fdalign.backends.custom import as_backend

        backend = copy.deepcopy(as_backend(model))  # trained in place: the caller's model stays the base
    if cfg.dataset_name is None:
        cfg.dataset_name = guess_dataset_name(cfg.data)
    if not cfg.out:
        check_run_request(cfg, backend is not None)  # says out is required
    assert cfg.out  # check_run_request raised otherwise
    from fdalign.io import run_lock

    with run_lock(cfg.out, "run directory"):  # one process per run directory, before anything is written
        check_run_request(cfg, backend is not None)
        index_info = index_file_of(cfg.data, cfg.shots)
        data = _open_data(cfg, index_info)
        _check_resume_settings(cfg, len(data.train))
        return _train_and_evaluate(cfg, index_info, data, backend, list(callbacks))


def as_train_config(config) -> TrainConfig:
    """``config`` as a TrainConfig: one already, or a mapping of its fields (checked like a YAML file)."""
    from fdalign.train.config import TrainConfig

    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(dict(config), source="the config mapping")
    raise FDAlignError(f"finetune() takes a fdalign.TrainConfig or a dict of its fields, not {type(config).__name__}")


def _logger_names(cfg, warn: bool = True) -> list[str]:
    """The loggers to run: ``logger`` plus ``tensorboard: true`` (older configs), the latter only with its
    package installed (a warning otherwise: it was the default, and is in many config files)."""
    import importlib.util

    from fdalign.loggers import check_loggers

    check_loggers(cfg.logger)
    names = list(cfg.logger)
    if cfg.tensorboard and "tensorboard" not in names:
        if importlib.util.find_spec("tensorboard") is None:
            if not warn:  # said once, before the data was read
                return names
            import warnings

            warnings.warn(
                "tensorboard: true, but the tensorboard package is not installed, so nothing is logged to "
                "TensorBoard; pip install 'fdalign[tensorboard]' or set tensorboard: false",
                stacklevel=3,
            )
        else:
            names.append("tensorboard")
    return names


def _check_resume_settings(cfg, num_train: int) -> None:
    """Resuming with other settings names the fields that differ, before a model loads."""
    out = Path(cfg.out)
    if not (cfg.resume and (out / "checkpoint" / "last.json").is_file() and (out / "config.yaml").is_file()):
        return
    from fdalign.train.config import TrainConfig, changed_settings

    old = TrainConfig.from_run_yaml(out / "config.yaml")
    changed = changed_settings(old, cfg.resolved(num_train))
    if changed:
        said = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise FDAlignError(
            f"cannot resume {out}: its settings differ from the run's config.yaml ({said}); resume with the "
            f"run's own config.yaml, or train into a new {option('out')}"
        )


@dataclass
class _Data:
    train: Any
    val: Any
    test: Any
    ood: list
    classnames: list
    templates: list
    hashes: dict
    # sets scored with prototypes of their OWN classes, built after training and selection:
    # [(name, split, templates, role)], the novel classes (role "novel") and --target sets ("target")
    own_classes: list = field(default_factory=list)
    class_split: dict | None = None  # base / novel class names with --base-classes


def _open_data(cfg, index_info) -> _Data:
    """Everything that can fail on user input fails here, before a model loads."""
    from fdalign.data import fewshot_val, load_ood_sets, open_dataset, sample_kshot, split_hash, verify_images
    from fdalign.prompts import load_templates

    templates = load_templates(cfg.templates)
    splits = open_dataset(cfg.data, cfg.image_root, cfg.classnames, split_file=cfg.split_file)
    if "train" not in splits:
        raise FDAlignError(
            f"--data {cfg.data} has no 'train' split (it has: {', '.join(splits)}); "
            "lay it out as ROOT/train/<class>/<image> (+ ROOT/test/...)"
        )
    own_classes, class_split = [], None
    if cfg.base_classes:  # from here on, the novel classes exist only as the 'novel' test set
        splits, novel, class_split = _split_base_novel(cfg, splits)
        own_classes.append(("novel", novel, templates, "novel"))
    own_classes += _open_targets(
        cfg, templates, taken={"train", "val", "test", "novel"} | {o.split("=", 1)[0] for o in cfg.ood}
    )
    if index_info is not None:  # the authors' shots and validation images, exactly
        if "val" not in splits:
            raise FDAlignError(f"index file {cfg.data} has no 'val' part to select the epoch on")
        train_split, val_split = splits["train"], splits["val"]
    else:
        train_split = sample_kshot(splits["train"], cfg.shots, cfg.seed)
        val_split = fewshot_val(splits, cfg.shots, cfg.seed)
    classnames = list(train_split.classnames)
    test_split = splits.get("test")
    _data_warnings(cfg, train_split, test_split)
    ood = load_ood_sets(cfg.ood, classnames, train_split.class_keys, reserved={"test", "val", "train"})
    if cfg.verify_images:
        verify_images(train_split)
        verify_images(val_split)
    hashes = {"train": split_hash(train_split), "val": split_hash(val_split)}
    _check_resume_hashes(cfg, hashes)
    if test_split is not None:
        hashes["test"] = split_hash(test_split, content=False)
    for name, split, _ in ood:
        hashes[name] = split_hash(split, content=False)
    for name, split, _, _ in own_classes:
        hashes[name] = split_hash(split, content=False)
    return _Data(train_split, val_split, test_split, ood, classnames, templates, hashes, own_classes, class_split)


def _split_base_novel(cfg, splits: dict) -> tuple[dict, Any, dict]:
    """``(splits of the base classes only, the novel classes' test split, {"base": names, "novel": names})``."""
    from fdalign.data.classsplit import base_class_indices, novel_of, restrict_classes

    if "test" not in splits:
        raise FDAlignError(
            f"--base-classes needs a test split to score the novel classes on; --data {cfg.data} "
            f"has only {', '.join(splits)}"
        )
    ref = splits["train"]
    base = base_class_indices(cfg.base_classes, ref.classnames, ref.class_keys)
    novel = novel_of(base, ref.num_classes)
    novel_test = restrict_classes(splits["test"], novel, name="novel")
    kept = {k: restrict_classes(v, base) for k, v in splits.items()}
    names = {"rule": cfg.base_classes, "base": kept["train"].classnames, "novel": novel_test.classnames}
    return kept, novel_test, names


def _open_targets(cfg, templates: list, taken: set) -> list:
    """``[(name, test split, templates, "target")]`` of every ``--target NAME=PATH``, each with its own classes."""
    from fdalign.data import open_dataset
    from fdalign.prompts import load_templates

    own = dict(spec.split("=", 1) for spec in cfg.target_templates)
    names = [spec.split("=", 1)[0] for spec in cfg.target]
    for name in own:
        if name not in names:
            raise FDAlignError(
                f"--target-templates names {name!r}, which is not a --target ({', '.join(names) or 'none'})"
            )
    out = []
    for spec in cfg.target:
        name, path = spec.split("=", 1)
        if name in taken:
            raise FDAlignError(f"--target {spec}: the name {name!r} is taken by another set; rename the target")
        taken = taken | {name}
        splits = open_dataset(path)
        if "test" not in splits:
            raise FDAlignError(
                f"--target {spec}: {path} has no test split (it has: {', '.join(splits)}); give a "
                "folder with test/<class>/ or a folder of class folders"
            )
        out.append((name, splits["test"], load_templates(own[name]) if name in own else templates, "target"))
    return out


def _check_resume_hashes(cfg, hashes: dict) -> None:
    out = Path(cfg.out)
    if cfg.resume and (out / "hashes.json").is_file():
        import json

        old = json.loads((out / "hashes.json").read_text(encoding="utf-8"))
        for k in ("train", "val"):
            if old.get(k) not in (None, hashes[k]):
                raise FDAlignError(
                    f"cannot resume {out}: its {k} images differ from the ones sampled now "
                    f"(data changed?); start a new --out"
                )


def _train_and_evaluate(cfg, index_info, d: _Data, backend=None, callbacks: list | None = None) -> Run:
    from fdalign.backends import load_clip
    from fdalign.data import ImageDataset, save_split
    from fdalign.io import atomic_write_json
    from fdalign.prototypes import build_prototypes
    from fdalign.selection import EvalSplit, check_disjoint
    from fdalign.spc import SPCConfig
    from fdalign.train.distributed import init_from_env
    from fdalign.train.trainer import resolve_device, train

    out = Path(cfg.out)
    dist = init_from_env(cfg.device)  # under torchrun: one process per GPU; rank 0 writes every file
    if dist.is_main:
        save_split(d.train, out / "splits" / "train.json")
        save_split(d.val, out / "splits" / "val.json")
        atomic_write_json(out / "hashes.json", d.hashes)
    device = resolve_device(cfg.device)
    progress = cfg.progress and sys.stderr.isatty()  # bars on a terminal; elsewhere one line per epoch / set
    lines = cfg.progress and not progress and dist.is_main
    if backend is None:
        backend = load_clip(cfg.model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
    spc = (
        SPCConfig(keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.spc_seed, renormalize=cfg.spc_renormalize)
        if cfg.spc
        else None
    )
    protos = build_prototypes(
        backend,
        d.classnames,
        d.templates,
        spc=spc,
        progress=progress or None,
        spurious_kind=cfg.spurious,
        spurious_seed=cfg.seed,
    )
    resolved = cfg.resolved(len(d.train))
    if dist.is_main:
        resolved.to_yaml(out / "config.yaml")
    train_ds = ImageDataset(d.train, backend.preprocess_train(scale=tuple(cfg.crop_scale), hflip=cfg.hflip))
    eval_tf = backend.preprocess_eval()
    val_eval = EvalSplit(
        ImageDataset(d.val, eval_tf),
        "val",
        _val_description(cfg, d.val, index_info),
        files=[str(d.val.resolve(s)) for s in d.val.samples],
    )
    reported = {o.name: o.split for o in d.ood}
    if d.test is not None:
        reported["test"] = d.test
    reported.update({name: split for name, split, _, _ in d.own_classes})
    check_disjoint(val_eval, {n: [sp.resolve(s) for s in sp.samples] for n, sp in reported.items()})
    if dist.is_main:
        print(
            f"training {backend.name} on {len(d.train)} images ({len(d.classnames)} classes x {cfg.shots} shots), "
            f"validating on {len(d.val)}; run directory {out}",
            file=sys.stderr,
        )
    # names the training images and their augmentation: with --f0-cache, it keys f0's cached answers
    data_key = f"{d.hashes['train']}|crop {list(cfg.crop_scale)}|hflip {cfg.hflip}|{backend.image_spec}"
    from fdalign.callbacks import CallbackList, ProgressLines
    from fdalign.loggers import make_loggers

    hooks = CallbackList(
        (make_loggers(_logger_names(cfg, warn=False), out, resolved.to_dict()) if dist.is_main else [])
        + ([ProgressLines()] if lines else [])
        + list(callbacks or [])
    )
    try:
        result = train(
            backend, train_ds, val_eval, protos, resolved, out, progress=progress, data_key=data_key, callbacks=hooks
        )
        run = _finish_run(cfg, index_info, d, backend, result, resolved, val_eval, eval_tf, device, progress, lines)
        if dist.is_main:
            hooks.on_end(run)
    finally:
        hooks.close()
    return run


def _finish_run(cfg, index_info, d, backend, result, resolved, val_eval, eval_tf, device, progress, lines) -> Run:
    """The Run of a trained model: its WiSE-FT rows chosen on val, then (rank 0) test / OOD and the reports."""
    from fdalign.train.distributed import current

    out = Path(cfg.out)
    dist = current()
    run = Run(
        out=out,
        config=resolved,
        best_epoch=result.best_epoch,
        best_val_top1=result.best_val_top1,
        encoder=result.encoder,
        head=result.head,
        fine_tuned_encoder=result.encoder,
        fine_tuned_head=result.head,
        classnames=list(d.classnames),
        preprocess=eval_tf,
    )
    if not dist.is_main:
        return run  # evaluation and reports are rank 0's
    if result.text_state is not None:  # FLYP / CLIP-LoRA: every row's classifier comes from its own text tower
        run.text_head = _TextHeads(backend, result, resolved, d.classnames, d.templates, device)
    run.models, run.wiseft_alpha = _wiseft_rows(result, resolved, val_eval, device, run.text_head)
    run.encoder, run.head = run.models[selected_row(run.wiseft_alpha)]  # what val chose, alpha 0 included
    result.selection.save(out / "selection.json")
    _evaluate_and_report(run, cfg, index_info, d, backend, result, eval_tf, device, progress, lines)
    _release_mixes(run, device)
    return run


def _evaluate_and_report(
    run: Run, cfg, index_info, d: _Data, backend, result, eval_tf, device, progress, lines=False
) -> None:
    """Test and OOD accuracy of every row (reported, never used to choose), metrics.json and report.md."""
    from fdalign.callbacks import set_line
    from fdalign.data import ImageDataset
    from fdalign.data.datasets import classname_table, is_plain_classname_list
    from fdalign.eval import EvalSet, run_evaluation, write_metrics, write_report

    resolved, out = run.config, run.out
    precision = resolved.precision if device.type == "cuda" else "fp32"
    sets, notes = {}, []
    if d.test is not None:
        sets["test"] = EvalSet("test", ImageDataset(d.test, eval_tf), None, role="test")
    else:  # never let the split that chose the epoch stand in for a test accuracy (warned before training)
        notes.append(NO_TEST.format(data=cfg.data))
    for name, split, subset in d.ood:
        sets[name] = EvalSet(name, ImageDataset(split, eval_tf), subset, role="ood")
    metrics = {}
    if sets:
        metrics = run_evaluation(
            run.models,
            sets,
            batch_size=resolved.eval_batch_size,
            device=device,
            precision=precision,
            progress=progress,
            num_workers=resolved.num_workers,
            on_set=set_line("fdalign train") if lines else None,
        )
    roles = {s.name: s.role for s in sets.values()}
    for name, split, templates, role in d.own_classes:
        metrics.update(
            _evaluate_own_classes(run, backend, name, split, templates, eval_tf, device, precision, progress, lines)
        )
        roles[name] = role
    classes = _class_coverage(len(d.classnames), d.test, d.ood)
    from fdalign.selection import starting_point_notes

    notes += starting_point_notes(result.selection.to_json())  # said in report.md and on stdout
    selection = dict(result.selection.to_json())
    selection["test / OOD sets"] = "only evaluated, never used to select anything"
    train_info = {
        "best_epoch": result.best_epoch,
        "val_top1_per_epoch": result.val_top1,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "wiseft_alpha_chosen": run.wiseft_alpha,
        "fine-tuned": "the selected epoch's encoder + head",
        "zero-shot": "CLIP with the prompt prototypes",
    }
    extra = {
        "roles": roles,
        "classes": classes,
        "hashes": d.hashes,
        "model": backend.name,
        "config": resolved.to_dict(),
        "selection": selection,
        "train": train_info,
    }
    if index_info is not None:
        extra["index_file"] = {"path": index_info.path, "shots": index_info.shots, "seed": index_info.seed}
    if d.class_split is not None:
        extra["class_split"] = d.class_split
    if any(role == "target" for *_, role in d.own_classes):
        extra["targets"] = {
            name: {"classes": split.classnames, "templates": len(t)}
            for name, split, t, role in d.own_classes
            if role == "target"
        }
    if d.test is None:
        extra["test"] = notes[0]
    write_metrics(out, metrics, extra)
    summary = {
        k: getattr(resolved, k)
        for k in (
            "model",
            "pretrained",
            "dataset_name",
            "mode",
            "shots",
            "seed",
            "templates",
            "alpha",
            "beta",
            "kl_direction",
            "spc",
            "head",
            "optimizer",
            "lr",
            "weight_decay",
            "epochs",
            "batch_size",
        )
    }
    if index_info is not None:
        summary["index file"] = f"{index_info.path} (K = {index_info.shots}, its seed {index_info.seed})"
    table = classname_table(d.train) if is_plain_classname_list(cfg.classnames) else None
    write_report(
        out,
        metrics,
        selection=selection,
        config=summary,
        hashes=d.hashes,
        roles=roles,
        title=f"FD-Align: {backend.name} on {resolved.dataset_name or cfg.data}, {cfg.shots}-shot",
        classes=classes,
        class_table=table,
        notes=notes,
    )
    run.metrics, run.roles, run.selection = metrics, roles, selection
    run.notes = notes


def _evaluate_own_classes(
    run: Run, backend, name: str, split, templates, eval_tf, device, precision, progress, lines=False
) -> dict:
    """``{name: {row: top-1 ...}}``: every row's encoder with a frozen head of ``split``'s own class prototypes
    (the classes the run never trained on have only text to go by, so the trained head is not used)."""
    from fdalign.data import ImageDataset
    from fdalign.eval import EvalSet, run_evaluation
    from fdalign.heads import PrototypeHead
    from fdalign.prototypes import build_prototypes

    cfg = run.config
    protos = build_prototypes(backend, split.classnames, templates, spc=None, progress=progress or None)
    scale = float(cfg.temperature if cfg.temperature is not None else backend.logit_scale)
    head = PrototypeHead(protos.class_prototypes, scale).to(device)
    from fdalign.callbacks import set_line

    models = {row: (encoder, head) for row, (encoder, _) in run.models.items()}
    if run.text_head is not None:  # a trained text tower also gives the other classes' prototypes
        models = {
            row: (encoder, head if row == "zero-shot" else run.text_head(_row_alpha(row), split.classnames))
            for row, (encoder, _) in run.models.items()
        }
    return run_evaluation(
        models,
        {name: EvalSet(name, ImageDataset(split, eval_tf), None, role="test")},
        batch_size=cfg.eval_batch_size,
        device=device,
        precision=precision,
        progress=progress,
        num_workers=cfg.num_workers,
        on_set=set_line("fdalign train") if lines else None,
    )


class _TextHeads:
    """The heads of a run that trained its text tower (FLYP, CLIP-LoRA): at WiSE-FT weight ``alpha`` both towers
    are mixed, so the classifier is the prototypes of the interpolated text tower (its method's prompts)."""

    def __init__(self, backend, result, cfg, classnames, templates, device):
        from fdalign.train.methods import method_spec

        self.backend, self.result, self.device, self.classnames = backend, result, device, list(classnames)
        prompt = method_spec(cfg.method).prompt
        self.templates = [prompt] if prompt else list(templates)
        self.scale = float(cfg.temperature if cfg.temperature is not None else backend.logit_scale)

    def __call__(self, alpha: float, classnames=None) -> Any:
        from fdalign.heads import PrototypeHead
        from fdalign.prototypes import text_state_prototypes
        from fdalign.train.wiseft import interpolate_state_dicts

        state = interpolate_state_dicts(self.result.zeroshot_text_state, self.result.text_state, alpha)
        protos = text_state_prototypes(self.backend, state, list(classnames or self.classnames), self.templates)
        return PrototypeHead(protos, self.scale).to(self.device)


def _row_alpha(row: str) -> float:
    return 0.0 if row == "zero-shot" else 1.0 if row == "fine-tuned" else float(row.split("-", 1)[1])


def _wiseft_rows(result, resolved, val_eval, device, text_head=None):
    """``(models, alpha chosen on val)``: zero-shot, fine-tuned and every WiSE-FT mix as
    ``{row name: (encoder, head)}``, on ``device``; the choice is recorded in ``result.selection``.
    ``text_head`` (FLYP, CLIP-LoRA): the mixes' heads come from the mixed text tower."""
    import copy

    from fdalign.eval.pipeline import EvalSet, run_evaluation
    from fdalign.selection import select_by
    from fdalign.train.wiseft import alpha_name, wiseft_model

    ft_encoder, ft_head, zs_head = result.encoder, result.head, result.zeroshot_head
    if resolved.mode != "linear-probe":
        zs_encoder = copy.deepcopy(ft_encoder)
        zs_encoder.load_state_dict(result.zeroshot_encoder_state)
    else:  # the probe never touched the encoder: share it, so its features are computed once
        zs_encoder = ft_encoder
    from fdalign.eval.featcache import frozen

    frozen(zs_encoder)  # the pretrained weights: its test / OOD features are shared by a sweep's runs
    alphas = sorted(set(float(a) for a in resolved.wiseft_alphas))
    models = {"zero-shot": (zs_encoder, zs_head), "fine-tuned": (ft_encoder, ft_head)}
    for a in alphas:
        if a not in (0.0, 1.0):
            models[alpha_name(a)] = wiseft_model(zs_encoder, ft_encoder, zs_head, ft_head, a)
            if text_head is not None:
                models[alpha_name(a)] = (models[alpha_name(a)][0], text_head(a))
    by_alpha = {a: models["zero-shot" if a == 0.0 else "fine-tuned" if a == 1.0 else alpha_name(a)] for a in alphas}
    precision = resolved.precision if device.type == "cuda" else "fp32"
    scores: dict = {}

    def val_top1(alpha, ds):
        if not scores:  # every alpha's val top-1 from one pass over val: each image decoded once
            table = run_evaluation(
                {str(a): m for a, m in by_alpha.items()},
                {"val": EvalSet("val", ds, role="val")},
                batch_size=resolved.eval_batch_size,
                device=device,
                precision=precision,
                progress=False,
                num_workers=resolved.num_workers,
            )["val"]
            scores.update({a: table[str(a)]["top1"] for a in alphas})
        return scores[alpha]

    for enc, head in models.values():
        enc.to(device)
        head.to(device)
    chosen, _ = select_by("wiseft_alpha", alphas, val_top1, val_eval, result.selection)
    return models, chosen


def _release_mixes(run: Run, device) -> None:
    """Move the WiSE-FT mixes off the accelerator once evaluated: the run keeps them (``run.models``), but
    they no longer hold device memory (a mix is a whole encoder; ViT-L/14: 1.2 GB each)."""
    import torch

    if device.type != "cuda":
        return
    for row, (enc, head) in run.models.items():
        if row.startswith("wiseft-") and enc is not run.encoder:
            enc.to("cpu")
            head.to("cpu")
    torch.cuda.empty_cache()


def _val_description(cfg, val_split, index_info) -> str:
    if index_info is not None:
        return f"val (the index file's val part, {len(val_split)} images)"
    where = "val/" if val_split.name == "val" else "train/ (held out from the training shots)"
    return f"val ({min(cfg.shots, 4)}-shot of {where}, {len(val_split)} images)"


def _data_warnings(cfg, train_split, test_split) -> None:
    """Say what the layout implies before a long run: val/ as the test set, wnid prompts."""
    from fdalign.data.imagenet import wnid_name_warning

    if test_split is not None and test_split.source == "val":
        print(
            f"fdalign train: note: {cfg.data} has train/ and val/ but no test/: val/ is the test split "
            "(ImageNet's protocol) and the validation images are held out from train/",
            file=sys.stderr,
        )
    if test_split is None:
        print(f"fdalign train: warning: {NO_TEST.format(data=cfg.data)}", file=sys.stderr)
    for w in (wnid_name_warning(train_split.classnames, f"--data {cfg.data}"), cfg.warmup_warning()):
        if w:
            print(f"fdalign train: warning: {w}", file=sys.stderr)


def _class_coverage(num_classes: int, test_split, ood) -> dict:
    from fdalign.eval.metrics import class_coverage

    out = {"test": class_coverage(num_classes, None)} if test_split is not None else {}
    out.update({o.name: o.coverage() for o in ood})
    return out
