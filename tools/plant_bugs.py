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
        "beta=cfg.beta if phase.use_kl else 0.0",
        "beta=1.0 if phase.use_kl else 0.0",
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
        "distributed.average_gradients(list(L.head.parameters()), L.dist)",
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
    ("killed writes' .tmp files kept", "src/fdalign/io.py", "        remove_stale_temps(directory)\n", ""),
    ("no word on the f0 cache", "src/fdalign/train/trainer.py", "print(f0cache.report(), file=sys.stderr)", "pass"),
    (
        "export does not check the recorded model hash",
        "src/fdalign/exporting.py",
        "    check_model_hash(run_dir)\n",
        "",
    ),
    (
        "a killed export's temp folder kept",
        "src/fdalign/io.py",
        'for p in [*path.parent.glob(f".{name}.*.tmp"), *path.parent.glob(f".{name}.*.old")]:',
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
        "current = fd is None or os.fstat(fd).st_ino == os.stat(lock_path).st_ino",
        "current = True",
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
        "    set_trainable(encoder, TrainableSpec.from_config(cfg), phase.train_encoder)",
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
