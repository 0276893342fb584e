"""Cross-data-set transfer: each --target scored with the run's encoders and the target's OWN class names
and templates (recomputed here from CLIP), never before selection; the sweep protocols' planning; the
report's cross-data-set table."""

import json

import pytest
import torch
import torch.nn.functional as F

import fdalign
from _synth import make_imagefolder, tiny_train_config, write_templates
from fdalign.data import ImageDataset
from fdalign.data.opener import open_dataset
from fdalign.errors import FDAlignError
from fdalign.experiments.sweep import SweepConfig, plan_runs, run_config

SOURCE = ["red apple", "green leaf", "blue sky"]
TARGET = ["pink cloud", "black cat"]  # no class in common with the source
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
TARGET_TEMPLATES = ["a blurry photo of the {}.", "itap of a {}.", "a {} in a video game."]

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross")
    src = make_imagefolder(d / "src", SOURCE, n_train=3, n_val=2, n_test=2, seed=0)
    tgt = make_imagefolder(d / "tgt", TARGET, n_train=0, n_test=3, seed=5) / "test"  # a folder of class folders
    return {
        "src": src,
        "tgt": tgt,
        "templates": write_templates(d / "t.txt", TEMPLATES),
        "target_templates": write_templates(d / "tt.txt", TARGET_TEMPLATES),
    }


def _config(tiny, sets, out, **kw):
    d = dict(
        spc_keep=2,
        spc_k=1,
        wiseft_alphas=[0.0, 1.0],
        target=[f"other={sets['tgt']}"],
        target_templates=[f"other={sets['target_templates']}"],
    )
    return tiny_train_config(tiny, sets["src"], sets["templates"], out, **{**d, **kw})


def _top1(backend, encoder, classes, templates, split) -> float:
    """Top-1 among ``classes`` with prototypes of ``templates``, computed here."""
    text = backend.encode_text([t.replace("{}", c) for c in classes for t in templates])
    protos = F.normalize(F.normalize(text.view(len(classes), len(templates), -1), dim=-1).mean(1), dim=-1)
    ds = ImageDataset(split, backend.preprocess_eval())
    encoder = encoder.cpu().eval()
    with torch.no_grad():
        hits = [int((F.normalize(encoder(x[None]), dim=-1) @ protos.t()).argmax().item() == y) for x, y in ds]
    return 100.0 * sum(hits) / len(hits)


def test_target_scored_with_its_own_classes_and_templates(tiny_openclip, sets, tmp_path, monkeypatch):
    import fdalign.backends as backends
    import fdalign.workflows.kshot as kshot

    events, load, rows = [], backends.load_clip, kshot._wiseft_rows

    def load_clip(*a, **kw):
        b = load(*a, **kw)
        enc = b.encode_text
        b.encode_text = lambda texts, *x, **y: (events.append(("text", list(texts))), enc(texts, *x, **y))[1]
        events.append(("backend", b))
        return b

    def wiseft_rows(*a, **kw):
        out = rows(*a, **kw)
        events.append(("selected", None))
        return out

    monkeypatch.setattr(backends, "load_clip", load_clip)
    monkeypatch.setattr(kshot, "_wiseft_rows", wiseft_rows)
    run = fdalign.finetune(_config(tiny_openclip, sets, tmp_path / "run"))
    cut = events.index(("selected", None))
    before = [t for kind, ts in events[:cut] if kind == "text" for t in ts]
    after = [t for kind, ts in events[cut:] if kind == "text" for t in ts]
    assert not any(c in t for t in before for c in TARGET)
    assert set(after) == {t.replace("{}", c) for c in TARGET for t in TARGET_TEMPLATES}

    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["roles"]["other"] == "target"
    assert doc["targets"]["other"]["classes"] == sorted(TARGET)
    split = open_dataset(sets["tgt"])["test"]
    backend = next(b for kind, b in events if kind == "backend")
    for row in ("zero-shot", "fine-tuned"):
        encoder = run.models[row][0]
        assert doc["metrics"]["other"][row]["n"] == 6
        assert doc["metrics"]["other"][row]["top1"] == pytest.approx(
            _top1(backend, encoder, split.classnames, TARGET_TEMPLATES, split)
        ), row


def test_target_errors(tiny_openclip, sets, tmp_path):
    for kw, match in (
        (dict(target=[f"test={sets['tgt']}"], target_templates=[]), "taken"),
        (dict(target_templates=["nope=openai80"]), "not a --target"),
        (dict(target=[f"other={sets['src'] / 'train' / 'red_apple'}"], target_templates=[]), "test split|class"),
    ):
        with pytest.raises(FDAlignError, match=match):
            fdalign.finetune(_config(tiny_openclip, sets, tmp_path / "x", **kw))
    with pytest.raises(FDAlignError, match="NAME=PATH"):
        _config(tiny_openclip, sets, tmp_path / "y", target=["nothing"]).validate()


def _sweep(protocol, **ds):
    return {
        "name": "t",
        "protocol": protocol,
        "shots": [2],
        "seeds": [1],
        "methods": {"fd-align": {"beta": 1.0}},
        "train": {"model": "fdalign-world"},
        "datasets": [{"name": "src", "data": "{data_root}/src", **ds}],
    }


def test_sweep_protocols_plan_cells(tmp_path):
    cfg = SweepConfig.from_dict(_sweep("base2novel"))
    (run,) = plan_runs(cfg)
    assert run_config(cfg, run, tmp_path, data_root=str(tmp_path)).base_classes == "first-half"
    cfg = SweepConfig.from_dict(_sweep("base2novel", train={"base_classes": "{data_root}/base.txt"}))
    assert run_config(cfg, run, tmp_path, data_root="/d").base_classes == "/d/base.txt"
    assert run_config(SweepConfig.from_dict(_sweep("kshot")), run, tmp_path, data_root="/d").base_classes is None

    cfg = SweepConfig.from_dict(_sweep("cross-dataset", targets=["a={data_root}/a", "b=/abs/b"]))
    c = run_config(cfg, run, tmp_path, data_root="/d")
    assert c.target == ["a=/d/a", "b=/abs/b"] and c.base_classes is None
    with pytest.raises(FDAlignError, match="heads"):
        SweepConfig.from_dict({**_sweep("base2novel"), "heads": ["tip"]})
    with pytest.raises(FDAlignError, match="no targets"):
        SweepConfig.from_dict(_sweep("cross-dataset"))
    with pytest.raises(FDAlignError, match="cross-dataset only"):
        SweepConfig.from_dict(_sweep("kshot", targets=["a=/a"]))


def test_shipped_protocol_presets_plan():
    from fdalign.experiments.sweep import load_sweep_config

    b2n, cross = load_sweep_config("base2novel"), load_sweep_config("cross-dataset")
    assert b2n.protocol == "base2novel" and len(b2n.datasets) == 11 and b2n.seeds == [1, 2, 3]
    assert b2n.shots == [16] and set(b2n.methods) == {"fine-tune", "fd-align"}
    assert b2n.wiseft_methods() == ["fine-tune", "fd-align"]
    assert cross.protocol == "cross-dataset" and [d.name for d in cross.datasets] == ["imagenet"]
    assert len(cross.datasets[0].targets) == 10 and not any("imagenet" in t for t in cross.datasets[0].targets)
    for name in ("base2novel-world", "cross-dataset-world"):
        assert load_sweep_config(name).world is not None


def test_report_cross_dataset_table(tiny_openclip, sets, tmp_path):
    from fdalign.experiments.report import build_report

    fdalign.finetune(_config(tiny_openclip, sets, tmp_path / "runs" / "a", target_templates=[]))
    rep = build_report([tmp_path / "runs"], tmp_path / "rep", plots=False, features=False)
    (g,) = rep.summary["protocols"]["cross-dataset"]["groups"]
    doc = json.loads((tmp_path / "runs" / "a" / "metrics.json").read_text())
    assert g["targets"] == ["other"]
    assert g["rows"]["fd-align"]["other"]["mean"] == pytest.approx(doc["metrics"]["other"]["fine-tuned"]["top1"])
    assert g["rows"]["zero-shot"]["test"]["mean"] == pytest.approx(doc["metrics"]["test"]["zero-shot"]["top1"])
    assert "base2novel" not in rep.summary["protocols"]
