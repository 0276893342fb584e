"""Plant each bug below in a scratch copy of src/, run the given tests against it, and say which test
caught it (or NOT CAUGHT). A developer's check that the trainer's tests can fail; not run by CI.

    python tools/plant_bugs.py tests/test_trainer_reference.py tests/test_cli_selection.py \
        tests/test_train.py tests/test_spc.py tests/test_f0_cache.py tests/test_distributed.py
    ONLY=0,3 python tools/plant_bugs.py tests/test_trainer_reference.py      # just bugs 0 and 3

A bug whose source line has since changed prints STRING NOT FOUND: update its line here.
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUGS = [
    (
        "f0 shares weights with ft",
        "src/fdalign/train/trainer.py",
        "frozen = _frozen_copy(encoder, cfg.f0_mode, dtype_0) if",
        "frozen = encoder if",
    ),
    (
        "f0 sees a different augmented view",
        "src/fdalign/losses.py",
        "self.f0(images.to(f0_dtype))",
        "self.f0(images.flip(-1).to(f0_dtype))",
    ),
    (
        "feat_0 = feat_t.detach()",
        "src/fdalign/train/step.py",
        "log_p0 = loss_fn.f0_log_probs(images)",
        "log_p0 = loss_fn.f0_log_probs(f0_features=feat_t.detach())",
    ),
    (
        "KL at temperature 1",
        "src/fdalign/train/trainer.py",
        "scale=scale,\n                    direction=cfg.kl_direction",
        "scale=1.0,\n                    direction=cfg.kl_direction",
    ),
    (
        "uncorrected spurious prototypes with SPC on",
        "src/fdalign/train/trainer.py",
        "spurious = prototypes.corrected_prototypes if cfg.spc else prototypes.spurious_prototypes",
        "spurious = prototypes.spurious_prototypes",
    ),
    ("KMeans on all templates", "src/fdalign/spc.py", ".fit(x[kept])", ".fit(x)"),
    (
        "alpha ignored",
        "src/fdalign/train/trainer.py",
        'alpha=cfg.alpha if phase.name == "fdalign" else 1.0',
        "alpha=1.0",
    ),
    (
        "beta ignored",
        "src/fdalign/train/trainer.py",
        "beta=cfg.beta if phase.train_encoder else 0.0,",
        "beta=1.0 if phase.train_encoder else 0.0,",
    ),
    (
        "trainable head left out of the optimiser",
        "src/fdalign/train/trainer.py",
        "named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad] + named",
        "named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]",
    ),
    (
        "CLI WiSE-FT mixes the head only",
        "src/fdalign/train/wiseft.py",
        "enc = ft_encoder if zs_encoder is ft_encoder else interpolate_module(zs_encoder, ft_encoder, alpha)",
        "enc = ft_encoder",
    ),
    (
        "selection on test images labelled val",
        "src/fdalign/workflows/kshot.py",
        "val_split = fewshot_val(splits, cfg.shots, cfg.seed)",
        "val_split = splits.get('test') or fewshot_val(splits, cfg.shots, cfg.seed)",
    ),
    ("f0 mode ignored (always eval)", "src/fdalign/losses.py", 'f0.train(mode == "released")', "f0.train(False)"),
    (
        "lp-ft starts from the last probe head",
        "src/fdalign/train/trainer.py",
        "head.load_state_dict(load_model(run_dir / MODEL_FILE).head.state_dict())",
        "pass",
    ),
    (
        "lp-ft selects over probe epochs too",
        "src/fdalign/train/trainer.py",
        "{e + 1: val_hist[e] for e in range(ph.start, ph.stop)}",
        "{e + 1: val_hist[e] for e in range(0, ph.stop)}",
    ),
    ("f0 cache key ignores the seed", "src/fdalign/train/f0cache.py", '"seed": int(seed)', '"seed": 0'),
    (
        "cached f0 rows misindexed",
        "src/fdalign/train/trainer.py",
        "cached[idx].to(L.device)",
        "cached[:len(idx)].to(L.device)",
    ),
    (
        "views ignore the epoch",
        "src/fdalign/data/views.py",
        "view_seed(self.seed, self.epoch, index)",
        "view_seed(self.seed, 0, index)",
    ),
    (
        "DDP loss not weighted by the rank's share",
        "src/fdalign/train/trainer.py",
        "loss * sampler.weights[b] if L.dist.enabled else loss",
        "loss",
    ),
    (
        "head gradients not averaged across ranks",
        "src/fdalign/train/trainer.py",
        "distributed.average_gradients(L.params[L.n_encoder_params :], L.dist)",
        "pass",
    ),
    (
        "every rank takes the same share",
        "src/fdalign/train/distributed.py",
        "mine = chunk[rank * per : (rank + 1) * per]",
        "mine = chunk[:per]",
    ),
]
# issue 21 (integrity): run with tests/test_integrity.py
BUGS += [
    (
        "selection scores test images, declared val files unchanged",
        "src/fdalign/workflows/kshot.py",
        "val_eval = EvalSplit(\n        ImageDataset(d.val, eval_tf),",
        "val_eval = EvalSplit(\n        ImageDataset(d.test or d.val, eval_tf),",
    ),
    (
        "disjointness guard trusts EvalSplit.files",
        "src/fdalign/selection.py",
        'split = getattr(self.dataset, "split", None)',
        "split = None",
    ),
    (
        "--temperature ignored by the trainer",
        "src/fdalign/train/trainer.py",
        "scale = float(cfg.temperature if cfg.temperature is not None else backend.logit_scale)",
        "scale = float(backend.logit_scale)",
    ),
    ("--spc-seed ignored by train's prototypes", "src/fdalign/workflows/kshot.py", "seed=cfg.spc_seed, ", ""),
    (
        "--spc-seed ignored by the IsolationForest",
        "src/fdalign/spc.py",
        "IsolationForest(random_state=cfg.seed)",
        "IsolationForest(random_state=0)",
    ),
    ("f0-cache key ignores the crop scale", "src/fdalign/workflows/kshot.py", "|crop {list(cfg.crop_scale)}", ""),
    (
        "f0 precision auto not bf16 on CUDA",
        "src/fdalign/train/trainer.py",
        '(cfg.f0_precision == "auto" and device.type == "cuda")',
        "False",
    ),
    (
        "Tip-F starts from alpha = beta = 1",
        "src/fdalign/heads/tip.py",
        "tip.labels, alpha, beta, trainable=True",
        "tip.labels, 1.0, 1.0, trainable=True",
    ),
    (
        "exported head names sorted",
        "src/fdalign/exporting.py",
        "save_head(tmp / HEAD_FILE, head, loaded.classnames,",
        "save_head(tmp / HEAD_FILE, head, sorted(loaded.classnames),",
    ),
    (
        "linear probe at --lr",
        "src/fdalign/train/trainer.py",
        'Phase("linear-probe", 0, cfg.epochs, cfg.lp_lr',
        'Phase("linear-probe", 0, cfg.epochs, cfg.lr',
    ),
    (
        "NaN logit rows rank 0 (correct)",
        "src/fdalign/eval/metrics.py",
        "return torch.where(torch.isfinite(logits).all(dim=1), rank, torch.full_like(rank, logits.shape[1]))",
        "return rank",
    ),
    ("NaN episode rows counted by argmax", "src/fdalign/eval/episodes.py", " & torch.isfinite(logits).all(-1)", ""),
    (
        "non-finite weights not checked",
        "src/fdalign/train/trainer.py",
        "check_finite_weights(encoder, head, epoch + 1, phase.lr)",
        "pass",
    ),
    (
        "predict keeps NaN rows",
        "src/fdalign/prediction.py",
        "finite = torch.isfinite(logits).all(dim=1)",
        "finite = torch.ones(len(logits), dtype=torch.bool)",
    ),
    (
        "spurious cosine in bf16",
        "src/fdalign/losses.py",
        "        features = features.float()\n    with torch.autocast",
        "        pass\n    with torch.autocast",
    ),
    (
        "content hash not checked",
        "src/fdalign/io.py",
        'if status == "bad" or (status == "missing" and require_hash):',
        "if False:",
    ),
    (
        "safetensors header in insertion order",
        "src/fdalign/io.py",
        "sort_keys=True, separators",
        "sort_keys=False, separators",
    ),
    (
        "f0 cache takes any finite values",
        "src/fdalign/train/f0cache.py",
        "elif (t > 1e-6).any() or ((t.double().exp().sum(dim=1) - 1).abs() > 1e-3).any():",
        "elif False:",
    ),
    (
        "CLI takes no run lock",
        "src/fdalign/workflows/kshot.py",
        'with run_lock(cfg.out, "run directory"):',
        'with __import__("contextlib").nullcontext():',
    ),
    (
        "lock takeover not said",
        "src/fdalign/io.py",
        "        if owner_path.is_file():\n            warnings.warn",
        "        if False:\n            warnings.warn",
    ),
    (
        "swallowed Ctrl-C not re-raised",
        "src/fdalign/train/trainer.py",
        "    def check(self) -> None:\n        if self.hit:",
        "    def check(self) -> None:\n        if False:",
    ),
    (
        "checkpoint read from the last.json beside it",
        "src/fdalign/train/checkpoint.py",
        'if "state" in meta:',
        "if False:",
    ),
    (
        "optional f0-cache write aborts on a full disk",
        "src/fdalign/train/f0cache.py",
        "        except OSError as e:\n            self.writable = False",
        "        except ValueError as e:\n            self.writable = False",
    ),
    (
        "killed writes' .tmp files kept",
        "src/fdalign/io.py",
        "        gone = remove_stale_temps(directory)\n",
        "        gone = []\n",
    ),
    ("no word on the f0 cache", "src/fdalign/train/trainer.py", "print(f0cache.report(), file=sys.stderr)", "pass"),
    (
        "a reader of the run's model skips its recorded hash",
        "src/fdalign/train/run.py",
        "        check_model_hash(run_dir)\n    return load_model(path)",
        "        pass\n    return load_model(path)",
    ),
    (
        "a killed export's temp folder kept",
        "src/fdalign/io.py",
        'for p in [*path.parent.glob(f"{TEMP_PREFIX}{name}.*.tmp"), *path.parent.glob(f"{OLD_PREFIX}{name}.*.tmp")]:',
        "for p in []:",
    ),
    (
        "disk full: no one-line message",
        "src/fdalign/io.py",
        "if isinstance(e, OSError) and e.errno in _FULL:",
        "if False:",
    ),
]
# issue 21 (command line and odd inputs): run with tests/test_odd_inputs.py tests/test_messages.py
BUGS += [
    (
        "non-UTF-8 name breaks the split hash",
        "src/fdalign/data/hashing.py",
        'field.encode("utf-8", "surrogateescape")',
        'field.encode("utf-8")',
    ),
    (
        "non-UTF-8 name breaks the K-shot rank",
        "src/fdalign/data/fewshot.py",
        '.encode("utf-8", "surrogateescape")).digest()',
        '.encode("utf-8")).digest()',
    ),
    (
        "JSON with a non-UTF-8 name not escaped",
        "src/fdalign/io.py",
        "except UnicodeEncodeError:  # non-UTF-8 file names",
        "except ZeroDivisionError:  # non-UTF-8 file names",
    ),
    (
        "data check silent on non-UTF-8 names",
        "src/fdalign/data/check.py",
        "odd = [split.resolve(s) for s in split.samples if _not_utf8(s.path)]",
        "odd = []",
    ),
    (
        "predict checks --out only after inference",
        "src/fdalign/workflows/deploy.py",
        "        _check_csv_out(out)  # before inference, not after it",
        "        pass",
    ),
    (
        "eval replaces an earlier evaluation",
        "src/fdalign/workflows/evaluation.py",
        "    diff = differs(base)\n",
        "    diff = None\n",
    ),
    (
        "eval --split train without a word",
        "src/fdalign/workflows/evaluation.py",
        "    _warn_training_images(run_dir, id_split, ood)\n",
        "",
    ),
    (
        "alpha-0 export titled fine-tuned",
        "src/fdalign/exporting.py",
        'not fine-tuned"\n        if alpha == 0.0\n',
        'not fine-tuned"\n        if alpha == 7.0\n',
    ),
    (
        "alpha-0 export: no word on stdout",
        "src/fdalign/cli/export.py",
        "    if result.wiseft_alpha == 0.0:",
        "    if False:",
    ),
    (
        "missing run path: --data is required",
        "src/fdalign/workflows/evaluation.py",
        "if _looks_like_path(args.target) and not args.model_config:",
        "if False:",
    ),
    (
        "meta-train names meta-eval's flags",
        "src/fdalign/workflows/meta.py",
        "class_pool(splits[role], cfg.spec, cfg.on_small, TRAIN_FLAGS)",
        "class_pool(splits[role], cfg.spec, cfg.on_small)",
    ),
    (
        "epochs 0 and -2 get different limits",
        "src/fdalign/train/config.py",
        "        # epochs first, so that 0 and -2 get the same limit\n        if self.epochs < 1:",
        "        if False:",
    ),
    ("--lr nan accepted", "src/fdalign/train/config.py", "if v is not None and math.isnan(v):", "if False:"),
    (
        "bad-image advice: skip bad images",
        "src/fdalign/data/check.py",
        '"replace or remove it (`fdalign data check` lists every unreadable image)"',
        '"replace or remove it, or skip bad images"',
    ),
    ("a tie counts as a grid edge", "src/fdalign/heads/cache.py", "and all(w[i] == chosen[i] for w in winners)", ""),
    (
        "a flat search not marked",
        "src/fdalign/heads/cache.py",
        'log.entries[what]["flat"] = len(candidates) > 1 and len(set(scores.values())) == 1',
        'log.entries[what]["flat"] = False',
    ),
    (
        "offline tag tries the download",
        "src/fdalign/backends/openclip.py",
        "reason = None if _cached_weights(tag_cfg) else _offline_reason(tag_cfg)",
        "reason = None",
    ),
    (
        "cached tag not found",
        "src/fdalign/backends/openclip.py",
        "            if isinstance(found, str):\n                return found",
        "            if False:\n                return found",
    ),
    (
        "alpha 0 selected without a word",
        "src/fdalign/workflows/kshot.py",
        "notes += starting_point_notes(result.selection.to_json())",
        "notes += []",
    ),
    (
        "starting point: alpha test wrong",
        "src/fdalign/selection.py",
        'float(wa["chosen"]) == 0.0',
        'float(wa["chosen"]) == 1.0',
    ),
    (
        "help prints two defaults",
        "src/fdalign/options.py",
        '        if "(default:" not in help_text:',
        "        if True:",
    ),
    (
        "card snippet absolute",
        "src/fdalign/exporting.py",
        "    out = Path(out.resolve().name)",
        "    out = out.resolve()",
    ),
    (
        "cut run config accepted",
        "src/fdalign/train/config.py",
        "lost = [k for k in RUN_CONFIG_KEYS if k not in d]",
        "lost = []",
    ),
    (
        "empty run config filled with defaults",
        "src/fdalign/train/config.py",
        '        if d is None:\n            raise FDAlignError(f"run config {path} is empty',
        '        if False:\n            raise FDAlignError(f"run config {path} is empty',
    ),
    (
        "non-UTF-8 YAML traceback",
        "src/fdalign/options.py",
        "    except UnicodeDecodeError as e:",
        "    except KeyError as e:",
    ),
    (
        "decompression bomb traceback",
        "src/fdalign/data/datasets.py",
        "except (OSError, ValueError, Image.DecompressionBombError) as e:",
        "except (OSError, ValueError) as e:",
    ),
    (
        "world render trusts recorded files",
        "src/fdalign/world/render.py",
        "        if got != want:",
        "        if False:",
    ),
    (
        "world.json list crashes",
        "src/fdalign/world/render.py",
        "    ok = isinstance(doc, dict) and",
        "    ok = True or",
    ),
    (
        "non-UTF-8 JSON traceback",
        "src/fdalign/io.py",
        "    except UnicodeDecodeError as e:",
        "    except KeyError as e:",
    ),
    (
        "'...' class folder dropped silently",
        "src/fdalign/data/datasets.py",
        'if c.name.startswith(".") and c.is_dir() and any(',
        "if False and any(",
    ),
]
# issue 18 (parallel sweeps, feature cache): run with tests/test_sweep_parallel.py tests/test_featcache.py
BUGS += [
    (
        "sweep cells not claimed",
        "src/fdalign/experiments/sweep.py",
        'stack.enter_context(run_lock(run_dir, "sweep cell"))',
        "pass",
    ),
    (
        "feature cache key ignores the preprocessing",
        "src/fdalign/eval/featcache.py",
        '"preprocessing": preprocessing}',
        '"preprocessing": ""}',
    ),
    ("feature cache key ignores the labels", "src/fdalign/eval/featcache.py", "|{s.label}\\n", "\\n"),
    (
        "corrupt cache entry used",
        "src/fdalign/eval/featcache.py",
        'read_safetensors(p, "feature cache entry", require_hash=True)',
        '(__import__("safetensors.torch").torch.load_file(p), {"key": key})',
    ),
    (
        "zero-shot encoder not marked frozen",
        "src/fdalign/workflows/kshot.py",
        "    frozen(zs_encoder)  #",
        "    (zs_encoder)  #",
    ),
    (
        "every cell on worker 0",
        "src/fdalign/experiments/launchers.py",
        "for slot in range(self.workers):",
        "for slot in range(1):",
    ),
    (
        "Ctrl-C not passed to the workers",
        "src/fdalign/experiments/launchers.py",
        "os.kill(pools[slot][1], signal.SIGINT)",
        "pass",
    ),
    (
        "finished cells resubmitted",
        "src/fdalign/experiments/sweep.py",
        'todo = [r for r in runs if records[r]["state"] not in ("done", "damaged")]',
        'todo = [r for r in runs if records[r]["state"] not in ("damaged",)]',
    ),
    (
        "concurrent askers both compute",
        "src/fdalign/eval/featcache.py",
        "with cache.computing(key):",
        "with contextlib.nullcontext():",
    ),
    (
        "off switch ignored",
        "src/fdalign/eval/featcache.py",
        "return None if _active[-1] is _OFF else _active[-1]",
        "return FeatureCache(os.environ[ENV]) if ENV in os.environ else None",
    ),
    (
        "lock taken on an unlinked lock file",
        "src/fdalign/io.py",
        "return fd is None or os.fstat(fd).st_ino == os.stat(path).st_ino",
        "return True",
    ),
    (
        "second Ctrl-C to a checkpointing worker",
        "src/fdalign/experiments/launchers.py",
        "                        if stop is None:\n                            stop = e\n",
        "                        stop = stop or e\n                        if True:\n",
    ),
    (
        "Ctrl-C before a worker's cell started is lost",
        "src/fdalign/experiments/launchers.py",
        "        if _ctrl_c:\n",
        "        if False:\n",
    ),
    (
        "outside run without request.yaml taken for the cell",
        "src/fdalign/experiments/sweep.py",
        "            if not (run_dir / REQUEST_FILE).is_file():",
        "            if False:",
    ),
    (
        "lambda transforms share a cache key",
        "src/fdalign/eval/featcache.py",
        '    if "<lambda>" in text or "<locals>" in text:',
        "    if False:",
    ),
    # --trainable (tests/test_trainable.py, tests/test_lora_export.py)
    (
        "LoRA f0 runs with the adapters left on",
        "src/fdalign/train/trainable.py",
        "                with adapters_disabled(enc):\n                    return enc(images)",
        "                with contextlib.nullcontext(enc):\n                    return enc(images)",
    ),
    (
        "full encoder parameters in the LoRA optimiser",
        "src/fdalign/train/trainer.py",
        "    set_trainable(encoder, tspec, phase.train_encoder)",
        "    encoder.requires_grad_(phase.train_encoder)",
    ),
    (
        "adapter export forgets the WiSE-FT scale",
        "src/fdalign/exporting.py",
        'lora_alpha=float(trainable["lora_alpha"]) * scale,',
        'lora_alpha=float(trainable["lora_alpha"]),',
    ),
    (
        "merge of open_clip attention drops the update",
        "src/fdalign/train/trainable.py",
        "unload_and_optionally_merge_module(merge=True,",
        "unload_and_optionally_merge_module(merge=False,",
    ),
    (
        "WiSE-FT of LoRA scales the wrong side",
        "src/fdalign/train/trainable.py",
        "m.scale_layer(float(alpha))",
        "m.scale_layer(1.0 - float(alpha))",
    ),
    (
        "WiSE-FT of LoRA scales cumulatively (scale not reset)",
        "src/fdalign/train/trainable.py",
        "            m.unscale_layer()  # back to lora_alpha / r\n",
        "",
    ),
    (
        "MHA base weights drift by (W + BA) - BA",
        "src/fdalign/train/trainable.py",
        "        _keep_mha_base_weights(module)\n",
        "",
    ),
    (
        "LoRA init drawn from the ambient RNG",
        "src/fdalign/train/trainable.py",
        "            if seed is not None:\n                torch.manual_seed(seed)\n",
        "",
    ),
    (
        "f0 fingerprinted after the adapters exist",
        "src/fdalign/train/trainer.py",
        "    f0cache = _f0_cache(\n        cfg,\n        encoder,",
        "    apply_trainable(encoder, spec, seed=0)\n    f0cache = _f0_cache(\n        cfg,\n        encoder,",
    ),
    (
        "config hash of full runs changed by the LoRA fields",
        "src/fdalign/train/trainer.py",
        '    if d.get("trainable", "full") != "lora":',
        "    if False:",
    ),
    (
        "model file holds the unmerged adapted encoder",
        "src/fdalign/train/trainer.py",
        "merge_adapters(encoder) if lora else encoder,",
        "encoder,",
    ),
    # the typed public API (tests/test_docs.py): mypy must see the real signatures behind the lazy names
    (
        "the stub lacks a lazy export",
        "src/fdalign/__init__.pyi",
        "from fdalign.workflows.kshot import finetune as finetune\n",
        "",
    ),
    (
        "finetune's config untyped",
        "src/fdalign/workflows/kshot.py",
        "def finetune(config: TrainConfig | Mapping[str, Any], *, model: Any = None, callbacks: Sequence[Any] = ()) -> Run:",
        "def finetune(config, *, model: Any = None, callbacks: Sequence[Any] = ()) -> Run:",
    ),
    (
        "a config field without help",
        "src/fdalign/workflows/evaluation.py",
        'metadata={"help": "which command\'s words the messages use: eval or zeroshot"}',
        "metadata={}",
    ),
    (
        "prepare: '..' accepted as a name part",
        "src/fdalign/data/prepare/paths.py",
        '    if part in (".", ".."):',
        '    if part == ".":',
    ),
    (
        "prepare: symbolic links in --from folders followed by default",
        "src/fdalign/data/prepare/sources.py",
        "self.list = [Source(p, follow_symlinks) for p in paths]",
        "self.list = [Source(p, True) for p in paths]",
    ),
    (
        "prepare: a staged file reused on its size alone",
        "src/fdalign/data/prepare/place.py",
        '    return "copy" if file_sha256(dest) == sources.sha256(m) else None',
        '    return "copy"',
    ),
    (
        "prepare: space check counts the staged files again",
        "src/fdalign/data/prepare/place.py",
        "        if _links(m, mode, device) or (stage is not None and _staged_size(stage / rel) == m.size):",
        "        if _links(m, mode, device):",
    ),
    (
        "prepare: foreign files in .partial carried into the prepared set",
        "src/fdalign/data/prepare/place.py",
        "    foreign = _sweep_foreign(stage, {rel for _, rel in plan.files} | set(plan.extra) | {MANIFEST})",
        "    foreign = []",
    ),
    (
        "prepare: inside() follows a link on the way",
        "src/fdalign/data/prepare/paths.py",
        "        if not stat.S_ISDIR(st.st_mode):",
        "        if not stat.S_ISDIR(os.stat(here).st_mode):",
    ),
    (
        "prepare: lock file left in --out",
        "src/fdalign/data/prepare/place.py",
        "        Path(lock.lock_file).unlink(missing_ok=True)",
        "        pass",
    ),
    (
        "prepare: dropped members not said",
        "src/fdalign/data/prepare/__init__.py",
        "    plan.notes += dropped_notes(src.dropped(), follow_symlinks) + duplicate_notes(plan)",
        "    plan.notes += duplicate_notes(plan)",
    ),
    (
        "prepare: a zip's symbolic link read as a file",
        "src/fdalign/data/prepare/sources.py",
        "                if kind and not stat.S_ISREG(kind):",
        "                if False:",
    ),
    (
        "prepare: DTD's member pattern without a hyphen (polka-dotted)",
        "src/fdalign/data/prepare/coop.py",
        r'r"images/(?P<rel>[a-z-]+/[a-z-]+_\d+\.jpg)"',
        r'r"images/(?P<rel>[a-z]+/[a-z]+_\d+\.jpg)"',
    ),
    (
        "prepare: EuroSAT_RGB.zip not recognised",
        "src/fdalign/data/prepare/coop.py",
        'r"(?:2750|EuroSAT_RGB)/',
        'r"(?:2750)/',
    ),
    (
        "prepare: miniImageNet ranks a class's files by string",
        "src/fdalign/data/prepare/imagenet.py",
        "by_class.setdefault(wnid, []).append((int(number), m))",
        "by_class.setdefault(wnid, []).append((number, m))",
    ),
    (
        "prepare: --link copy hard-links",
        "src/fdalign/data/prepare/place.py",
        'if m.path is not None and mode == "hard":',
        'if m.path is not None and mode in ("hard", "copy"):',
    ),
    (
        "prepare: --link copy keeps a hard link staged by an earlier run",
        "src/fdalign/data/prepare/place.py",
        'return "hard" if mode == "hard" else None',
        'return "hard"',
    ),
    (
        "prepare: an image found twice counted twice",
        "src/fdalign/data/prepare/base.py",
        "        i = self._at.get(dest)\n",
        "        i = None\n",
    ),
    (
        "prepare: macOS metadata read as data",
        "src/fdalign/data/prepare/sources.py",
        '    if "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] in SYSTEM_FILES:',
        "    if False:",
    ),
    (
        "prepare: a folder's members not listed under its own name",
        "src/fdalign/data/prepare/sources.py",
        "        top = os.path.basename(os.path.abspath(self.path))",
        '        top = "."',
    ),
    (
        "prepare: a plain tar cut inside a header passes as complete",
        "src/fdalign/data/prepare/sources.py",
        '        if rest.strip(b"\\0") or not rest:',
        "        if False:",
    ),
    (
        "prepare: torchvision's download=True advice leaks",
        "src/fdalign/data/prepare/official.py",
        '    if isinstance(e, RuntimeError) and "download=True" in text:',
        "    if False:",
    ),
    (
        "data check: split_zhou_DescribableTextures.json not DTD",
        "src/fdalign/data/check.py",
        '    "describabletextures": "DTD",  # CoOp\'s split_zhou_DescribableTextures.json\n',
        "",
    ),
    (
        "prepare: checksum message cut mid-word",
        "src/fdalign/data/prepare/download.py",
        '            said = f"expected {got_hash.group(1)}, got {got_hash.group(2)}" if got_hash else " ".join(str(e).split())',
        '            said = " ".join(str(e).split())[:200]',
    ),
    (
        "prepare: --expect-counts recorded relative",
        "src/fdalign/data/prepare/__init__.py",
        'f"--expect-counts {Path(expect_counts).resolve()}"',
        'f"--expect-counts {expect_counts}"',
    ),
    (
        "data check: OOD table 12 characters wide whatever the names",
        "src/fdalign/data/check.py",
        "        w = max([12] + [len(o.name) + 2 for o in report.ood])",
        "        w = 12",
    ),
    (
        "prepare: --mirror ignored",
        "src/fdalign/data/prepare/download.py",
        "    return f\"{mirror.rstrip('/')}/{d.filename}\" if mirror else d.url",
        "    return d.url",
    ),
    (
        "prepare: no network claims bytes kept in a .part",
        "src/fdalign/data/prepare/download.py",
        "            kept = part.stat().st_size if part.is_file() else 0",
        "            kept = 1",
    ),
    (
        "prepare: what was found not said",
        "src/fdalign/data/prepare/__init__.py",
        "        found = what_was_found(p, src)",
        "        found = ''",
    ),
    (
        "data check: note: prepared: prepared:",
        "src/fdalign/data/check.py",
        "        f\"{manifest.get('title', '?')} by fdalign",
        "        f\"prepared: {manifest.get('title', '?')} by fdalign",
    ),
    (
        "prepare: a page from Drive kept as the split file",
        "src/fdalign/data/prepare/download.py",
        "    if not ok:\n        part.unlink()",
        "    if False:\n        part.unlink()",
    ),
    (
        "prepare: a link named with --from refused (O_NOFOLLOW on the user's own link)",
        "src/fdalign/data/prepare/sources.py",
        "self.path.stat().st_size, path=os.path.realpath(self.path)))",
        "self.path.stat().st_size, path=str(self.path)))",
    ),
    # issue 26, the Python API: run with tests/test_python_api.py
    (
        "predict iterates a string's characters",
        "src/fdalign/workflows/deploy.py",
        "    if isinstance(images, (str, os.PathLike)):  # one path, not a sequence of characters\n        images = [images]\n",
        "",
    ),
    (
        "eval scores an unfinished run's best-so-far weights",
        "src/fdalign/workflows/evaluation.py",
        'run_dir = finished_run(args.target, "eval")',
        "run_dir = Path(args.target)",
    ),
    (
        "TrainConfig not coerced at construction",
        "src/fdalign/options.py",
        "            if coerced is not value:",
        "            if False:",
    ),
    (
        "from_text_encoder defaults its scale",
        "src/fdalign/losses.py",
        "        if scale is None:\n",
        "        if scale is None and False:\n",
    ),
    (
        "run.encoder is the fine-tuned one whatever val chose",
        "src/fdalign/workflows/kshot.py",
        "    run.encoder, run.head = run.models[selected_row(run.wiseft_alpha)]",
        "    pass",
    ),
    (
        "resume compares settings only after loading the model",
        "src/fdalign/workflows/kshot.py",
        "    changed = changed_settings(old, cfg.resolved(num_train))",
        "    changed = {}",
    ),
    (
        "on_epoch_end never called",
        "src/fdalign/train/trainer.py",
        "writer.callbacks.on_epoch_end(",
        "(lambda m: None)(",
    ),
    (
        "no progress lines off a terminal",
        "src/fdalign/workflows/kshot.py",
        "lines = cfg.progress and not progress and dist.is_main",
        "lines = False",
    ),
    (
        "the user's model trained in place",
        "src/fdalign/workflows/kshot.py",
        "backend = copy.deepcopy(as_backend(model))",
        "backend = as_backend(model)",
    ),
    (
        "Python errors speak of flags",
        "src/fdalign/errors.py",
        "    if _ON_COMMAND_LINE.get():",
        "    if True:",
    ),
    (
        "sweep --set shots refused",
        "src/fdalign/experiments/sweep.py",
        "if key in GRID_FIELDS and key not in GRID_OVERRIDES:",
        "if key in GRID_FIELDS:",
    ),
    (
        "tensorboard: true silently off without its package",
        "src/fdalign/workflows/kshot.py",
        '        if importlib.util.find_spec("tensorboard") is None:',
        "        if False:",
    ),
    (
        "a built-in typo says reinstall",
        "src/fdalign/backends/openclip.py",
        "        if close:  # a typo",
        "        if False:  # a typo",
    ),
    (
        "the loggers never see a step",
        "src/fdalign/train/trainer.py",
        "        self.callbacks.on_step(row)",
        "        pass",
    ),
    (
        "user's dot files taken for killed writes' temps",
        "src/fdalign/io.py",
        "    return _TEMP_NAME.fullmatch(name) is not None",
        '    return name.startswith(".") and name.endswith((".tmp", ".old"))',
    ),
    (
        "stale temps searched in every sub-folder",
        "src/fdalign/io.py",
        "    for here in [directory, *(directory / f for f in folders)]:",
        '    for here in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:',
    ),
    (
        "removed temps not said",
        "src/fdalign/io.py",
        "        if gone:  # said",
        "        if False:",
    ),
    (
        "another host's lock owner said to have ended",
        "src/fdalign/io.py",
        "    if host != socket.gethostname():",
        "    if False:",
    ),
    (
        "prompt-cache key not compared",
        "src/fdalign/prototypes.py",
        '    if meta.get("key") != key:',
        "    if False:",
    ),
    (
        "f0 cache epoch not compared",
        "src/fdalign/train/f0cache.py",
        "        if wrote != (self.key, str(epoch)):",
        "        if wrote[0] != self.key:",
    ),
    (
        "prompt-cache key of non-UTF-8 class names",
        "src/fdalign/prototypes.py",
        'payload.encode("utf-8", "surrogatepass")',
        'payload.encode("utf-8")',
    ),
    (
        "run's recorded model hash skipped by eval / predict",
        "src/fdalign/train/run.py",
        '    if status != "bad":  # a file failing',
        "    if False:  # a file failing",
    ),
    (
        "model header entry that is not JSON: a trace",
        "src/fdalign/train/run.py",
        '        except ValueError:\n            raise FDAlignError(\n                f"model file {path}: its header entry',
        '        except KeyError:\n            raise FDAlignError(\n                f"model file {path}: its header entry',
    ),
    (
        "duplicate YAML keys take the last value",
        "src/fdalign/options.py",
        "                    if first is not None:",
        "                    if False:",
    ),
    (
        "YAML aliases expanded without a bound",
        "src/fdalign/options.py",
        "        if n > YAML_MAX_VALUES:",
        "        if False:",
    ),
    (
        "a YAML file read around the bounded reader",
        "src/fdalign/demo.py",
        '    d = read_yaml(PRESET_DIR / f"{PRESET}.yaml", "sweep preset")',
        '    import yaml\n\n    d = yaml.safe_load((PRESET_DIR / f"{PRESET}.yaml").read_text())',
    ),
    (
        "config.yaml vs metrics.json not compared",
        "src/fdalign/experiments/runs.py",
        "        check_agreement(run_dir, cfg, spec)\n",
        "",
    ),
    (
        "sweep.json overwritten, not merged",
        "src/fdalign/experiments/sweep.py",
        "            self._merge(self._read())\n",
        "",
    ),
    (
        "sweep.json written without its lock",
        "src/fdalign/experiments/sweep.py",
        "        with shared_file_lock(self.out / SWEEP_LOCK, f\"sweep index {self.out / 'sweep.json'}\", SWEEP_LOCK_TIMEOUT):",
        "        with contextlib.nullcontext():",
    ),
    (
        "damaged cache entries left out of the sweep's last line",
        "src/fdalign/cli/sweep.py",
        '    damaged = cache.get("corrupt", 0)',
        "    damaged = 0",
    ),
    (
        "lr beyond float32 accepted",
        "src/fdalign/train/config.py",
        "            if beyond_float32(v):",
        "            if False:",
    ),
    (
        "training time of the last resumed segment only",
        "src/fdalign/train/trainer.py",
        "        seconds=seconds_before + time.time() - t_start,",
        "        seconds=time.time() - t_start,",
    ),
    (
        "a cell another process held counted as run now",
        "src/fdalign/experiments/sweep.py",
        '        self.executed += not (status["state"] == "claimed" or status.get("skipped"))',
        "        self.executed += 1",
    ),
]
# issue 25 (reports, the suite): run with tests/test_ape.py tests/test_sweep_parallel.py (93-95);
# tests/test_report.py tests/test_plots.py tests/test_train_config.py (96-103)
BUGS += [
    (
        "APE grid 1.0 read as one channel",
        "src/fdalign/heads/ape.py",
        "q = round(spec * dim) if spec <= 1 else int(spec)",
        "q = round(spec * dim) if spec < 1 else int(spec)",
    ),
    (
        "every local worker pinned to the first device",
        "src/fdalign/experiments/launchers.py",
        "device = str(self.devices[i % len(self.devices)]) if self.devices else None",
        "device = str(self.devices[0]) if self.devices else None",
    ),
    (
        "jobs.json rewritten with this call's jobs only",
        "src/fdalign/experiments/launchers.py",
        "        ids = self._jobs()\n",
        "        ids = {}\n",
    ),
    (
        "a head without OOD sets gives no point",
        "src/fdalign/experiments/runs.py",
        "if model not in self.metrics.get(self.id_set, {}):",
        "if any(model not in self.metrics[s] for s in self.metrics):",
    ),
    (
        "summary.json keeps NaN",
        "src/fdalign/experiments/report.py",
        "        return None\n    if isinstance(doc, dict):",
        "        return doc\n    if isinstance(doc, dict):",
    ),
    (
        "base-to-novel rows left out of the CSV",
        "src/fdalign/experiments/report.py",
        '    csv_rows += protocol_csv_rows(summary["protocols"])\n',
        "",
    ),
    (
        "CoCoOp's source said where its numbers are not shown",
        "src/fdalign/experiments/protocols.py",
        "    if ref_pub is not None:  # the source only",
        "    if pub is not None:  # the source only",
    ),
    (
        "the settings all runs share not shown",
        "src/fdalign/experiments/report.py",
        "    shared = shared_section(runs)\n",
        "    shared = []\n",
    ),
    (
        "the chosen WiSE-FT alpha not in the table",
        "src/fdalign/experiments/rows.py",
        'if all("alpha" in p for p in pts):',
        "if False:",
    ),
    (
        "no word on a warm-up as long as the run",
        "src/fdalign/train/config.py",
        "if 0 < v <= warmup_epochs]",
        "if 0 < v < warmup_epochs]",
    ),
    (
        "spurious prototypes labelled by index",
        "src/fdalign/experiments/plots.py",
        'ax.set_xticks(range(k), names if row == n - 1 else [""] * k)',
        "ax.set_xticks(range(k))",
    ),
]
# issue 28 (evaluation at scale: one pass, pixel cache): run with tests/test_pixelcache.py
BUGS += [
    (
        "--jpeg-draft: the feature cache key ignores the draft decode",
        "src/fdalign/eval/featcache.py",
        'key["jpeg_draft"] = dataset.draft',
        "pass",
    ),
    (
        "--jpeg-draft: the pixel pass decodes exactly, ignoring the dataset's draft size",
        "src/fdalign/eval/pixelcache.py",
        'draft=getattr(dataset, "draft", None))',
        "draft=None)",
    ),
    (
        "--jpeg-draft: PIL's draft mode never asked for",
        "src/fdalign/data/datasets.py",
        'im.draft("RGB", (self.draft, self.draft))',
        "pass",
    ),
    (
        "pixel cache key without the crop size",
        "src/fdalign/eval/pixelcache.py",
        "    description = describe_transform(pil)",
        "    description = describe_transform(T.Compose([s for s in pil.transforms if not isinstance(s, T.CenterCrop)]))",
    ),
    (
        "stale pixels after an image changed (digest memo keyed by path only)",
        "src/fdalign/eval/featcache.py",
        "k = (path, st.st_size, st.st_mtime_ns)",
        "k = (path,)",
    ),
    (
        "pixel cache key without the images",
        "src/fdalign/eval/pixelcache.py",
        '"images": images,',
        '"images": len(dataset),',
    ),
    (
        "damaged pixel entry used",
        "src/fdalign/eval/pixelcache.py",
        'if file_sha256(arr_path) != meta["sha256"]:',
        "if False:",
    ),
    (
        "normalisation not bitwise ToTensor's (x * (1/255))",
        "src/fdalign/eval/pixelcache.py",
        "x = pixels.to(torch.get_default_dtype()).div(255)",
        "x = pixels.to(torch.get_default_dtype()).mul(1 / 255)",
    ),
    (
        "one pass per encoder again",
        "src/fdalign/eval/pipeline.py",
        "        for f, (_, names) in zip(feats, groups.values()):",
        "        feats = [encode_once([e], es.dataset, batch_size, device, num_workers, precision, False, set_name)[0][0]"
        " for e in encoders]\n        for f, (_, names) in zip(feats, groups.values()):",
    ),
    (
        "pixel cache hit ignored",
        "src/fdalign/eval/pixelcache.py",
        "    hit = cache.get(key)\n    if hit is None:",
        "    hit = None\n    if hit is None:",
    ),
    (
        "LRU evicts the most recently used",
        "src/fdalign/eval/pixelcache.py",
        "return sorted(out)",
        "return sorted(out, reverse=True)",
    ),
    (
        "--no-pixel-cache ignored",
        "src/fdalign/eval/pixelcache.py",
        "return None if _active[-1] is _OFF else _active[-1]",
        "return PixelCache(os.environ[ENV]) if ENV in os.environ else None",
    ),
    (
        "simplejpeg's fast upsampling (not PIL's pixels)",
        "src/fdalign/eval/pixelcache.py",
        'return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False))',
        'return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=True))',
    ),
    (
        "two askers both decode",
        "src/fdalign/eval/pixelcache.py",
        "with cache.computing(key):  # a second worker",
        "with contextlib.nullcontext():  # a second worker",
    ),
]
# issue 27: the robust fine-tuning methods (tests/test_method_losses.py tests/test_methods.py)
BUGS += [
    (
        "logit-kd: KL arguments swapped (KL(P0 || Pt))",
        "src/fdalign/losses.py",
        "return kl_rows(_log_softmax(logits_t / temperature), _log_softmax(logits_0 / temperature))",
        "return kl_rows(_log_softmax(logits_0 / temperature), _log_softmax(logits_t / temperature))",
    ),
    (
        "KL toward f0: the frozen side not detached",
        "src/fdalign/losses.py",
        "log_q = log_q.detach().to(device=log_p.device, dtype=log_p.dtype)",
        "log_q = log_q.to(device=log_p.device, dtype=log_p.dtype)",
    ),
    (
        "feature-kd: the frozen features not detached",
        "src/fdalign/losses.py",
        "f0 = feat_0.detach().to(device=feat_t.device, dtype=feat_t.dtype)",
        "f0 = feat_0.to(device=feat_t.device, dtype=feat_t.dtype)",
    ),
    (
        "l2-sp: theta0 moves with the weights (taken after each step)",
        "src/fdalign/train/trainer.py",
        "extras.start = [zeroshot_encoder_state[n].to(device) for n, _ in named[:n_enc]]",
        "extras.start = [p for _, p in named[:n_enc]]",
    ),
    (
        "FLYP: captions misaligned with their images",
        "src/fdalign/train/step.py",
        "return self.class_tokens[labels, j]",
        "return self.class_tokens[labels.roll(1), j]",
    ),
    (
        "shuffled spurious prototypes equal to the real ones (one permutation for every class)",
        "src/fdalign/prototypes.py",
        "perms = torch.stack([torch.randperm(m, generator=g) for _ in range(c)])",
        "perms = torch.randperm(m, generator=g).expand(c, m)",
    ),
    (
        "logit-kd: the KL looks at the spurious prototypes, not the classes",
        "src/fdalign/train/trainer.py",
        "spurious, normalize_spurious = prototypes.class_prototypes, True",
        "pass",
    ),
    (
        "beta weighs only a KL (l2-sp runs as plain fine-tuning)",
        "src/fdalign/train/trainer.py",
        "beta=cfg.beta if phase.train_encoder else 0.0,",
        "beta=cfg.beta if phase.use_kl else 0.0,",
    ),
]
# issue 27's report (tests/test_compare.py)
BUGS += [
    (
        "val_choice row chosen on the test accuracy",
        "src/fdalign/experiments/report.py",
        "m: r.val_top1",
        'm: points[m][seed]["id"]',
    ),
    (
        "paired differences taken reference minus method",
        "src/fdalign/experiments/compare.py",
        "d = [a[s][key] - b[s][key] for s in seeds]",
        "d = [b[s][key] - a[s][key] for s in seeds]",
    ),
    (
        "frontier keeps dominated points",
        "src/fdalign/experiments/compare.py",
        "b[1] >= a[1] and b[2] >= a[2]",
        "b[1] > a[1] and b[2] > a[2] and False",
    ),
]
tests = sys.argv[1:] or ["tests"]
only = os.environ.get("ONLY")
for i, (name, path, old, new) in enumerate(BUGS):
    if only and str(i) not in only.split(","):
        continue
    tmp = tempfile.mkdtemp()
    shutil.copytree(f"{ROOT}/src", f"{tmp}/src")
    p = f"{tmp}/{path}"
    s = open(p).read()
    if old not in s:
        print(f"[{i}] {name}: STRING NOT FOUND", flush=True)
        continue
    open(p, "w").write(s.replace(old, new))
    env = dict(os.environ, PYTHONPATH=f"{tmp}/src")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    failed = [l for l in r.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))]  # ERROR: a fixture failed
    caught = failed[0].split(" ", 1)[1].split(" - ")[0] if failed else f"pytest exit {r.returncode}"
    print(f"[{i}] {name}: {'CAUGHT by ' + caught if r.returncode else 'NOT CAUGHT'}", flush=True)
    shutil.rmtree(tmp)
