"""``fdalign demo``: run FD-Align for real on the embedded world and report ID / OOD accuracy."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Few-shot fine-tune the shipped fdalign-world CLIP on K images per class of one style of the
embedded synthetic world, then test on that style (ID) and on held-out styles (OOD). Compares
zero-shot CLIP, full fine-tuning (beta 0), FD-Align (beta > 0, SPC-corrected spurious prototypes
of the openai80 templates) and WiSE-FT of both fine-tuned models (mixing weight chosen on val),
over several seeds, all with the same learning rate, epochs and schedule. The default ID style is
'jpeg corrupted', where zero-shot CLIP is weak and fine-tuning gains ID accuracy (on photo the
shipped model is already near its ceiling and fine-tuning only loses); the defaults were chosen on
dev seeds and a dev test set (benchmarks/tune_demo.py). Offline; a few minutes on a laptop CPU.

The demo is a preset of the experiment engine: `fdalign world render` into OUT/world, the demo
sweep (`fdalign sweep demo`, one `fdalign train` run per seed and method in OUT/runs/) and
`fdalign report`. Running it again with the same options reuses the finished runs.
Writes to --out:
  report.md              accuracy table (mean ± std over seeds), what happened, paired differences,
                         plots, environment, split hashes
  metrics.json           every number per seed, and what was selected on what
  summary.json           the report's numbers
  accuracy_by_set_*.png  grouped bars per style and method
  id_ood_*.png           the ID-OOD plane with the WiSE-FT curves of fine-tuning and of FD-Align
  training_*.png         CE, KL and LR per step of every run
  world/ runs/           the rendered world; every run's folder (config, log.csv, metrics, model)

examples:
  fdalign demo --out demo_out
  fdalign demo --out demo_quick --quick
  fdalign demo --out demo_photo --id-style photo
  fdalign demo --out demo_sketch --id-style sketch --ood-styles photo painting --shots 4
"""


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter
    from fdalign.demo import DEFAULT_OOD_STYLES, DemoConfig

    d = DemoConfig()
    p = subparsers.add_parser(
        "demo",
        help="run FD-Align offline on the embedded world: zero-shot vs fine-tune vs FD-Align vs WiSE-FT "
        "(world render + the demo sweep + report)",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default=d.out, help="output folder (created)")
    p.add_argument(
        "--seeds",
        type=int,
        default=d.seeds,
        help="number of seeds (K-shot sample, val sample, "
        "data order, augmentation); the table shows mean ± std over them",
    )
    p.add_argument("--first-seed", type=int, default=d.first_seed, help="seeds are first-seed, first-seed+1, ...")
    p.add_argument("--shots", type=int, default=d.shots, help="K: training images per class")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (fine-tune and FD-Align alike)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (fine-tune and FD-Align alike)")
    p.add_argument("--beta", type=float, default=d.beta, help="FD-Align weight of the spurious-feature KL loss (> 0)")
    p.add_argument("--id-style", default=d.id_style, help="world style of the training, val and ID test images")
    p.add_argument(
        "--ood-styles",
        nargs="+",
        default=list(DEFAULT_OOD_STYLES),
        metavar="STYLE",
        help="held-out world styles to test on (quote names with spaces: 'jpeg corrupted')",
    )
    p.add_argument("--test-per-class", type=int, default=d.test_per_class, help="test images per class and style")
    p.add_argument(
        "--test-seed",
        type=int,
        default=d.test_seed,
        help="render seed of the world (the fixed test "
        "sets and the pools the K-shot train / val images are drawn from)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument(
        "--selection",
        choices=("best", "last"),
        default=d.selection,
        help="epoch that fine-tune and FD-Align keep: best = best val top-1, last = the last one",
    )
    p.add_argument(
        "--templates",
        default=d.templates,
        help="prompt templates for the class and spurious prototypes: openai80, tip7 or a text file",
    )
    p.add_argument(
        "--spc",
        action=argparse.BooleanOptionalAction,
        default=d.spc,
        help="Spurious Prototype Correction of the FD-Align prototypes",
    )
    p.add_argument("--spc-keep", type=int, default=d.spc_keep, help="SPC: templates kept by the IsolationForest")
    p.add_argument("--spc-k", type=int, default=d.spc_k, help="SPC: KMeans centres (corrected prototypes)")
    p.add_argument(
        "--wiseft-alphas",
        type=float,
        nargs="+",
        default=list(d.wiseft_alphas),
        metavar="ALPHA",
        help="WiSE-FT mixing weights to choose from on val (0 = zero-shot, 1 = fine-tuned)",
    )
    p.add_argument(
        "--model",
        default=d.model,
        help="CLIP model (the shipped fdalign-world by default; any "
        "model fdalign can load, at the world's image size or not)",
    )
    p.add_argument(
        "--pretrained",
        default=d.pretrained,
        help="checkpoint file (or tag, or 'random') overriding the model's weights",
    )
    p.add_argument("--model-config", default=d.model_config, help="open_clip model-config JSON for a custom model")
    p.add_argument("--device", default=d.device, help="torch device: auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads; 0 = torch's default (all cores)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run, not a result: 2 seeds, 2 shots, 1 epoch, 2 test "
        "images per class, 2 OOD styles, alphas 0 0.5 1 (options set to other than their default still "
        "win). It still trains 4 runs and evaluates 3 models each: about 1.5-2.5 minutes on 2 CPU cores",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=d.progress,
        help="progress lines and training bars; --no-progress prints only the final table",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdalign.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=args.out,
        seeds=args.seeds,
        first_seed=args.first_seed,
        shots=args.shots,
        epochs=args.epochs,
        lr=args.lr,
        beta=args.beta,
        id_style=args.id_style,
        ood_styles=tuple(args.ood_styles),
        test_per_class=args.test_per_class,
        test_seed=args.test_seed,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        selection=args.selection,
        templates=args.templates,
        spc=args.spc,
        spc_keep=args.spc_keep,
        spc_k=args.spc_k,
        wiseft_alphas=tuple(args.wiseft_alphas),
        model=args.model,
        pretrained=args.pretrained,
        model_config=args.model_config,
        device=args.device,
        threads=args.threads,
        quick=args.quick,
        progress=args.progress,
    )
    result = run_demo(cfg)
    if not cfg.progress:
        from fdalign.demo import summary_table

        print(summary_table(result.summary, result.config.id_style, result.config.ood_styles))
    return 0
