"""The report's figures, read back from the drawn matplotlib objects: no tick labels running into the
next panel, no overlapping alpha labels, one colour per method in every report, a class legend on
the t-SNE; and plots never import the report (no import circle)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from fdalign.experiments import plots as P


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """Every figure a plot function makes, kept open instead of written (drawn, so sizes are known)."""
    kept = []

    def keep(fig, path):
        fig.canvas.draw()
        kept.append(fig)
        return path

    monkeypatch.setattr(P, "_save", keep)
    yield kept
    for f in kept:
        P._plt().close(f)


def _boxes(fig, artists):
    r = fig.canvas.get_renderer()
    return [a.get_window_extent(r) for a in artists]


def test_learning_rate_labels_stay_out_of_the_kl_panel(figures, tmp_path):
    log = tmp_path / "log.csv"
    # the demo's warm-up from 5e-5 to 1e-4: plain tick labels "0.00010" are wide
    rows = ["step,ce,kl,lr"] + [f"{i},{2 - i / 50:.4f},{i / 1000:.5f},{5e-5 + 5e-5 * i / 40:.8f}" for i in range(1, 41)]
    log.write_text("\n".join(rows) + "\n")
    run = SimpleNamespace(dir=tmp_path, method="fd-align", seed=1)
    P.training_curves(SimpleNamespace(runs=[run], title="w, 2-shot", dataset="w", shots=2), tmp_path)
    (fig,) = figures
    ce, kl, lr = fig.axes[:3]
    r = fig.canvas.get_renderer()
    # each panel's full extent (tick labels and offset text included) clears the panel to its right
    assert lr.get_tightbbox(r).x0 > kl.get_tightbbox(r).x1
    assert kl.get_tightbbox(r).x0 > ce.get_tightbbox(r).x1


def _group(rows: dict[str, tuple[float, float]], curves=None):
    """A report group of one seed: ``rows[row] = (id, ood mean)`` with one OOD set."""
    pts = {row: {1: {"id": i, "ood_mean": o, "sets": {"test": i, "sketch": o}}} for row, (i, o) in rows.items()}
    return SimpleNamespace(
        points=pts, curves=curves or {}, ood_sets=["sketch"], id_set="test", title="w, 2-shot", dataset="w", shots=2
    )


def test_alpha_labels_do_not_overlap_on_the_id_ood_plane(figures, tmp_path):
    alphas = [i / 10 for i in range(11)]

    def curve(shift):  # two WiSE-FT curves from the same zero-shot point (alpha 0), bunched near it
        return {
            a: {1: {"id": 50 + 5 * a**3 + shift * a, "ood_mean": 60 - 5 * a**3 + shift * a, "sets": {}}} for a in alphas
        }

    g = _group(
        {"zero-shot": (50, 60), "fine-tune": (51, 59), "fd-align": (51, 59.05)},
        curves={"fine-tune": curve(0), "fd-align": curve(0.3)},
    )
    P.id_ood_plane(g, tmp_path)
    (fig,) = figures
    texts = [t for t in fig.axes[0].texts if t.get_text() in {f"{a:g}" for a in alphas}]
    assert {"0", "1"} <= {t.get_text() for t in texts}  # the curve's ends are labelled
    boxes = _boxes(fig, texts)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)


def test_a_method_keeps_its_colour_in_every_report(figures, tmp_path):
    """Before: colours came from the order of the rows, so fd-align changed colour between reports."""
    from matplotlib.colors import to_hex

    P.accuracy_by_set(_group({"zero-shot": (50, 60), "fine-tune": (55, 50), "fd-align": (54, 58)}), tmp_path)
    P.accuracy_by_set(_group({"zero-shot": (50, 60), "fd-align": (54, 58)}), tmp_path)

    def colours(fig):
        ax = fig.axes[0]
        from matplotlib.container import BarContainer

        return {
            c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in ax.containers if isinstance(c, BarContainer)
        }

    a, b = map(colours, figures)
    assert a["fd-align"] == b["fd-align"] and a["zero-shot"] == b["zero-shot"]
    assert len(set(a.values())) == 3
    assert P.row_colour("fd-align [epochs=2]") == P.row_colour("fd-align [epochs=2]") != P.row_colour("fd-align")


def test_tsne_has_a_class_legend(figures, tmp_path):
    import torch

    classes = ["circle", "square", "star"]
    labels = [0, 1, 2] * 4
    data = {
        "feats": {"zero-shot": torch.randn(12, 8, generator=torch.Generator().manual_seed(0))},
        "labels": labels,
        "domains": ["test"] * 6 + ["sketch"] * 6,
        "classnames": classes,
    }
    P.tsne_plot(SimpleNamespace(title="w, 2-shot", dataset="w", shots=2), data, tmp_path)
    (fig,) = figures
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    names = {t.get_text() for leg in legends for t in leg.get_texts()}
    assert set(classes) <= names and {"test", "sketch"} <= names
    # the legend's colours are the ones the points of each class were drawn with
    from matplotlib.colors import to_hex

    cls_leg = next(leg for leg in legends if "circle" in {t.get_text() for t in leg.get_texts()})
    leg_colour = {t.get_text(): to_hex(h.get_color()) for t, h in zip(cls_leg.get_texts(), cls_leg.legend_handles)}
    pts = fig.axes[0].collections[0]  # the "test" points, in label order 0, 1, 2, 0, ...
    drawn = [to_hex(c) for c in pts.get_facecolors()[:3]]
    assert [leg_colour[c] for c in classes] == drawn


def test_plots_do_not_import_the_report():
    """The figures are drawn for the report; an import back (even inside a function) was a circle."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(P))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "fdalign.experiments.report" not in imported
    code = "import sys, fdalign.experiments.plots; print('fdalign.experiments.report' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_spurious_prototypes_are_labelled_by_their_templates(figures, tmp_path, monkeypatch):
    """The spurious-distribution figure names each prototype by its template (SPC: the kept template
    nearest each centre, marked ≈), not by its index 0..k-1."""
    import torch
    from PIL import Image

    import fdalign.prototypes as protos_mod
    from fdalign.prompts import load_templates
    from fdalign.prototypes import Prototypes

    templates = load_templates("tip7")
    spurious = torch.nn.functional.normalize(torch.randn(len(templates), 8, generator=torch.Generator().manual_seed(0)))
    plain = Prototypes(torch.eye(2, 8), spurious, None, templates, templates, [])
    assert P.prototype_labels(plain) == [t if len(t) <= 40 else t[:39] + "…" for t in templates]
    # SPC dropped template 0 and clustered the rest into 2: centres near templates 5 and 2
    centres = torch.nn.functional.normalize(spurious[[5, 2]] + 0.1 * spurious[[4, 3]])
    spc = Prototypes(torch.eye(2, 8), spurious, centres, templates, templates[1:], templates[:1])
    assert P.prototype_labels(spc) == ["≈ " + templates[5], "≈ " + templates[2]]
    # ...and what the figure's last panel shows under its bars
    monkeypatch.setattr(protos_mod, "build_prototypes", lambda *a, **k: plain)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    cfg = SimpleNamespace(spc=False, templates="tip7", temperature=10.0, spc_renormalize=False)
    data = {
        "run": SimpleNamespace(config=cfg, backend=None),
        "classnames": ["a", "b"],
        "feats": {"zero-shot": torch.randn(2, 8), "fd-align": torch.randn(2, 8)},
        "labels": [0, 1],
        "images": [str(tmp_path / "a.png")] * 2,
        "n_id": 2,
    }
    P.spurious_plot(SimpleNamespace(title="w, 1-shot", dataset="w", shots=1), data, tmp_path)
    ax = figures[-1].axes[-1]
    assert [t.get_text() for t in ax.get_xticklabels()] == P.prototype_labels(plain)
