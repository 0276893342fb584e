"""Accuracy effect of a fixed set of V augmented views per image (``--view-cycle V``) against fresh
views every epoch, for FD-Align on the embedded world, measured side by side in one run.

A fixed set of views lets the f0 cache hold V epochs instead of all of them; this prints what it
costs in accuracy. Same task as the demo (fdalign-world, 8 shots of the 'jpeg corrupted' style,
beta 20 in paper units, 4 epochs at lr 1e-4), test sets of the ID style and four OOD styles.

    python benchmarks/fixed_views.py --seeds 3
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile

import torch

OOD = ("sketch", "painting", "cartoon", "dark")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cycles", type=int, nargs="+", default=[0, 1, 2], help="0 = fresh views every epoch")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--test-per-class", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fdalign.backends import load_clip
    from fdalign.eval import EvalSet, run_evaluation
    from fdalign.prompts import load_templates
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.config import TrainConfig
    from fdalign.train.trainer import train
    from fdalign.world.dataset import WorldDataset
    from fdalign.world.generator import CLASSES, render_grid

    id_style = "jpeg corrupted"
    backend = load_clip("fdalign-world")
    spec = backend.image_spec
    protos = build_prototypes(backend, list(CLASSES), load_templates("openai80"), spc=SPCConfig(keep=60, k=20))

    def world(per_class, seed, style, augment=False):
        return WorldDataset(
            render_grid(per_class, seed, styles=[style], image_size=spec.size), spec.mean, spec.std, augment=augment
        )

    sets = {
        s: EvalSet(s, world(args.test_per_class, _seed("test", s), s), role="test" if s == id_style else "ood")
        for s in (id_style, *OOD)
    }
    results: dict[int, list[tuple[float, float]]] = {c: [] for c in args.cycles}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            train_set = world(8, _seed("train", seed), id_style, augment=True)
            val = world(2, _seed("val", seed), id_style)
            for cycle in args.cycles:
                b = load_clip("fdalign-world")
                cfg = TrainConfig(
                    shots=8,
                    seed=seed,
                    epochs=args.epochs,
                    lr=1e-4,
                    beta=20.0,
                    batch_size=32,
                    spc_keep=60,
                    spc_k=20,
                    selection="last",
                    num_workers=0,
                    device="cpu",
                    progress=False,
                    tensorboard=False,
                    view_cycle=cycle,
                )
                res = train(b, train_set, val, protos, cfg, f"{tmp}/s{seed}c{cycle}")
                m = run_evaluation({"ft": (res.encoder, res.head)}, sets, batch_size=128, progress=False)
                ood = statistics.mean(m[s]["ft"]["top1"] for s in OOD)
                results[cycle].append((m[id_style]["ft"]["top1"], ood))
                print(
                    f"seed {seed} view cycle {cycle or 'fresh'}: ID {results[cycle][-1][0]:.1f} OOD {ood:.1f}",
                    flush=True,
                )
    fresh = results[args.cycles[0]]
    print(
        f"\nFD-Align on the world, {args.seeds} seeds, {args.epochs} epochs (mean over seeds; paired difference "
        f"against {args.cycles[0] or 'fresh'} views):"
    )
    for cycle, rows in results.items():
        d_id = statistics.mean(r[0] - f[0] for r, f in zip(rows, fresh))
        d_ood = statistics.mean(r[1] - f[1] for r, f in zip(rows, fresh))
        print(
            f"  views {'fresh each epoch' if cycle == 0 else f'{cycle} per image':>18}: "
            f"ID {statistics.mean(r[0] for r in rows):.1f}  OOD {statistics.mean(r[1] for r in rows):.1f}  "
            f"(diff ID {d_id:+.1f}, OOD {d_ood:+.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
