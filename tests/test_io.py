import os
import stat

import pytest
import torch

from fdalign.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_text


def test_atomic_write_has_plain_open_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    ours = atomic_write_text(tmp_path / "ours.txt", "x")
    assert stat.S_IMODE(os.stat(ours).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "f.txt", "old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # not bytes: fails while writing
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_safetensors_accepts_tied_tensors(tmp_path):
    from safetensors.torch import load_file

    w = torch.arange(6.0).view(2, 3)
    path = atomic_save_safetensors(tmp_path / "t.safetensors", {"a": w, "b": w, "c": w.t()})
    out = load_file(path)
    assert torch.equal(out["a"], w) and torch.equal(out["b"], w) and torch.equal(out["c"], w.t())


def test_read_json_errors_name_the_file_and_what_it_is(tmp_path):
    from fdalign.errors import FDAlignError
    from fdalign.io import read_json

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FDAlignError, match=r"split file .*bad\.json is not valid JSON"):
        read_json(bad, "split file")
    with pytest.raises(FDAlignError, match=r"index file .*nope\.json does not exist"):
        read_json(tmp_path / "nope.json", "index file")
    with pytest.raises(FDAlignError, match="is a folder"):
        read_json(tmp_path, "split file")
    assert read_json(atomic_write_text(tmp_path / "ok.json", '{"a": [1]}')) == {"a": [1]}


def test_read_safetensors_round_trip_and_garbage(tmp_path):
    from fdalign.errors import FDAlignError
    from fdalign.io import read_safetensors

    w = torch.randn(3, 2)
    path = atomic_save_safetensors(tmp_path / "w.safetensors", {"w": w}, {"format": "x"})
    tensors, meta = read_safetensors(path)
    assert torch.equal(tensors["w"], w) and meta == {"format": "x"}
    junk = atomic_write_text(tmp_path / "junk.safetensors", "not a tensor file")
    with pytest.raises(FDAlignError, match=r"model file .*junk\.safetensors is not a readable safetensors"):
        read_safetensors(junk, "model file")
