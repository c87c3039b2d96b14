"""Every registered data source, tested for free from the tiny data set its ``example`` writes
(the loss registry's pattern): each split loads as uint8 images with labels in range, the cache
returns the same tensors, a source of files indexes the same images the stream loader reads, and
the config accepts its name."""

from __future__ import annotations

import pytest
import torch

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.datasets import DATASETS, file_sources, load_dataset


@pytest.fixture
def accept_generated_files(monkeypatch):
    """torchvision checks CIFAR's and STL-10's files against the real ones' MD5 sums; the
    generated copies have the real layout but not the real bytes, so the check is lifted here
    (only the check: the files are read by torchvision's own code)."""
    import os

    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10

    for module in (cifar, stl10):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_source_loads_its_example(name, tmp_path, accept_generated_files):
    source = DATASETS[name]
    where = source.example(tmp_path / "data")
    assert bool(source.path) == ("path" in where) == (source.index is not None)
    for split in source.splits or ("train", "test"):
        data = load_dataset(name, split, **where)
        assert data.images.dtype == torch.uint8 and data.images.ndim == 4
        assert len(data.images) == len(data.labels) > 0 and data.images.shape[1] in (1, 3)
        if split != "unlabeled":
            assert data.labels.min() >= 0 and data.labels.max() < len(data.classes)
        again = load_dataset(name, split, **where)  # from the cache
        assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
        if source.index is not None:
            files = source.index(where["path"], split, where["root"], None)
            assert torch.equal(files.labels, data.labels) and files.classes == data.classes
    with pytest.raises((ValueError, FileNotFoundError), match="no-such-split"):
        load_dataset(name, "no-such-split", **where)  # the error names the split
    cfg = apply_overrides(load_recipe(None), [f"--data.name={name}"])
    assert cfg.data.name == name


def test_the_sources_of_files_are_the_indexed_ones():
    assert file_sources() == [n for n, s in DATASETS.items() if s.index is not None]
    assert set(file_sources()) == {"imagefolder", "webdataset"}
