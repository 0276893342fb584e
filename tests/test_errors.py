"""An unreadable image found mid-run must reach the user as one line naming the file."""

import pytest
from torch.utils.data import DataLoader

from _synth import make_imagefolder, truncate_file
from fdalign.cli import user_message
from fdalign.data import ImageDataset, open_dataset
from fdalign.errors import FDAlignError


@pytest.fixture()
def broken_test_split(tmp_path):
    root = make_imagefolder(tmp_path / "d", ["circle", "star"], n_train=1, n_test=2)
    split = open_dataset(str(root))["test"]
    bad = split.resolve(split.samples[0])
    truncate_file(bad)
    return split, bad


def test_truncated_image_raises_user_error_naming_file(broken_test_split):
    split, bad = broken_test_split
    with pytest.raises(FDAlignError, match="cannot be read") as info:
        ImageDataset(split)[0]
    assert str(bad) in str(info.value)


def test_error_from_dataloader_worker_is_one_line(broken_test_split):
    split, bad = broken_test_split
    loader = DataLoader(ImageDataset(split, transform=lambda im: 0), batch_size=1, num_workers=1)
    with pytest.raises(FDAlignError) as info:
        list(loader)
    assert "Original Traceback" in str(info.value)  # what torch hands back
    msg = user_message(info.value)
    assert "\n" not in msg and str(bad) in msg and msg.startswith("image ")
