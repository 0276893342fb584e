import pytest

from _synth import make_imagefolder
from fdalign.data import load_ood_sets
from fdalign.errors import FDAlignError

ID_CLASSES = ["circle", "square", "star"]


def test_subset_is_mapped_onto_id_labels(tmp_path):
    ood = make_imagefolder(tmp_path / "ood", ["star", "circle"], n_train=0, n_test=2)
    [(name, split, subset)] = load_ood_sets([f"sk={ood}"], ID_CLASSES)
    assert name == "sk" and subset == [0, 2]
    # every sample's label is the ID index of its folder's class
    for s in split.samples:
        assert ID_CLASSES[s.label] in s.path


def test_full_class_set_needs_no_subset_and_names_must_be_unique(tmp_path):
    ood = make_imagefolder(tmp_path / "ood", ID_CLASSES, n_train=0, n_test=1)
    [(_, _, subset)] = load_ood_sets([f"v2={ood}"], ID_CLASSES)
    assert subset is None
    with pytest.raises(FDAlignError, match="already used"):
        load_ood_sets([f"a={ood}", f"a={ood}"], ID_CLASSES)
    with pytest.raises(FDAlignError, match="already used"):
        load_ood_sets([f"test={ood}"], ID_CLASSES, reserved={"test"})
