"""Plant each bug below in a scratch copy of src/, run the given tests against it, and say which test
caught it (or NOT CAUGHT). A developer's check that the trainer's tests can fail; not run by CI.

    python tools/plant_bugs.py tests/test_trainer_reference.py tests/test_cli_selection.py \
        tests/test_train.py tests/test_spc.py tests/test_f0_cache.py tests/test_distributed.py
    ONLY=0,3 python tools/plant_bugs.py tests/test_trainer_reference.py      # just bugs 0 and 3

A bug whose source line has since changed prints STRING NOT FOUND: update its line here.
"""
import os, shutil, subprocess, sys, tempfile
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUGS = [
 ("f0 shares weights with ft", "src/fdalign/train/trainer.py", "frozen = _frozen_copy(encoder, cfg.f0_mode, dtype_0) if", "frozen = encoder if"),
 ("f0 sees a different augmented view", "src/fdalign/losses.py", "self.f0(images.to(f0_dtype))", "self.f0(images.flip(-1).to(f0_dtype))"),
 ("feat_0 = feat_t.detach()", "src/fdalign/train/step.py", "log_p0 = loss_fn.f0_log_probs(images)", "log_p0 = loss_fn.f0_log_probs(f0_features=feat_t.detach())"),
 ("KL at temperature 1", "src/fdalign/train/trainer.py", "scale=scale, direction=cfg.kl_direction", "scale=1.0, direction=cfg.kl_direction"),
 ("uncorrected spurious prototypes with SPC on", "src/fdalign/train/trainer.py", "spurious = prototypes.corrected_prototypes if cfg.spc else prototypes.spurious_prototypes", "spurious = prototypes.spurious_prototypes"),
 ("KMeans on all templates", "src/fdalign/spc.py", ".fit(x[kept])", ".fit(x)"),
 ("alpha ignored", "src/fdalign/train/trainer.py", 'alpha=cfg.alpha if phase.name == "fdalign" else 1.0', "alpha=1.0"),
 ("beta ignored", "src/fdalign/train/trainer.py", "beta=cfg.beta if phase.use_kl else 0.0", "beta=1.0 if phase.use_kl else 0.0"),
 ("trainable head left out of the optimiser", "src/fdalign/train/trainer.py", "named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad] + named", "named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]"),
 ("CLI WiSE-FT mixes the head only", "src/fdalign/train/wiseft.py", "enc = ft_encoder if zs_encoder is ft_encoder else interpolate_module(zs_encoder, ft_encoder, alpha)", "enc = ft_encoder"),
 ("selection on test images labelled val", "src/fdalign/workflows/kshot.py", "val_split = fewshot_val(splits, cfg.shots, cfg.seed)", "val_split = splits.get('test') or fewshot_val(splits, cfg.shots, cfg.seed)"),
 ("f0 mode ignored (always eval)", "src/fdalign/losses.py", 'f0.train(mode == "released")', "f0.train(False)"),
 ("lp-ft starts from the last probe head", "src/fdalign/train/trainer.py", "head.load_state_dict(load_model(run_dir / MODEL_FILE).head.state_dict())", "pass"),
 ("lp-ft selects over probe epochs too", "src/fdalign/train/trainer.py", "{e + 1: val_hist[e] for e in range(ph.start, ph.stop)}", "{e + 1: val_hist[e] for e in range(0, ph.stop)}"),
 ("f0 cache key ignores the seed", "src/fdalign/train/f0cache.py", '"seed": int(seed)', '"seed": 0'),
 ("cached f0 rows misindexed", "src/fdalign/train/trainer.py", "cached[idx].to(L.device)", "cached[:len(idx)].to(L.device)"),
 ("views ignore the epoch", "src/fdalign/data/views.py", "view_seed(self.seed, self.epoch, index)", "view_seed(self.seed, 0, index)"),
 ("DDP loss not weighted by the rank's share", "src/fdalign/train/trainer.py", "loss * sampler.weights[b] if L.dist.enabled else loss", "loss"),
 ("head gradients not averaged across ranks", "src/fdalign/train/trainer.py", "distributed.average_gradients(list(L.head.parameters()), L.dist)", "pass"),
 ("every rank takes the same share", "src/fdalign/train/distributed.py", "mine = chunk[rank * per:(rank + 1) * per]", "mine = chunk[:per]"),
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
        print(f"[{i}] {name}: STRING NOT FOUND", flush=True); continue
    open(p, "w").write(s.replace(old, new))
    env = dict(os.environ, PYTHONPATH=f"{tmp}/src")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env, capture_output=True, text=True)
    failed = [l for l in r.stdout.splitlines() if l.startswith("FAILED")]
    print(f"[{i}] {name}: {'CAUGHT by ' + failed[0][7:].split(' - ')[0] if r.returncode else 'NOT CAUGHT'}", flush=True)
    shutil.rmtree(tmp)
