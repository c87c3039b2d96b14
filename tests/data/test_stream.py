"""The streaming data path: indexing folders, archives and shards; the workers' geometric views
against the tensor path and torchvision; training, resume and DDP on images of varying size."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from helpers import files_run_cfg, one_and_two_process_losses

from manifold_ssl.data import load_splits
from manifold_ssl.data.datasets import load_dataset
from manifold_ssl.data.files import centre_view, index_images, index_shards
from manifold_ssl.data.stream import Layout, StreamBatches, _Geometric
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.data.views import (
    AugmentSpec,
    MultiViewAugment,
    crop_boxes,
    crop_uniforms,
    resized_crop,
    sample_params,
)
from manifold_ssl.methods import METHODS
from manifold_ssl.run import train as pretrain
from manifold_ssl.training.metrics import read_metrics


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes × (16 train, 4 test) JPEGs of sides 20…48."""
    root = tmp_path_factory.mktemp("stream") / "images"
    return write_image_folder(root, 3, {"train": 16, "test": 4}, (20, 48))


def _cfg(tmp_path, folder, *overrides):
    return files_run_cfg(tmp_path, "imagefolder", folder, "--data.loader=stream", *overrides)


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


# --------------------------------------------------------------------------- indexing
def test_folder_tar_targz_and_shards_index_the_same_images(folder, tmp_path):
    import webdataset as wds

    files = index_images(folder, "train", tmp_path / "d")
    assert len(files) == 48 and files.classes == ["class000", "class001", "class002"]
    assert files.labels.tolist() == [0] * 16 + [1] * 16 + [2] * 16
    ref = [files.open(i).size for i in range(len(files))]
    assert len(set(ref)) > 10  # varying sizes
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        archive = tmp_path / f"set{suffix}"
        with tarfile.open(archive, mode) as tar:
            tar.add(folder, arcname="set")
        packed = index_images(archive, "train", tmp_path / "d")
        assert packed.labels.tolist() == files.labels.tolist()
        assert all(packed.read(i) == files.read(i) for i in range(len(files)))
    (tmp_path / "shards").mkdir()
    for split in ("train", "test"):
        split_files = index_images(folder, split, tmp_path / "d")
        for shard in range(2):
            with wds.TarWriter(str(tmp_path / "shards" / f"{split}-{shard:03d}.tar")) as sink:
                for i in range(shard, len(split_files), 2):
                    label = str(int(split_files.labels[i]))
                    sink.write({"__key__": f"s{i:05d}", "jpg": split_files.read(i), "cls": label})
    shards = index_shards(str(tmp_path / "shards" / "{split}-{000..001}.tar"), "train", tmp_path)
    assert shards.classes == ["0", "1", "2"] and len(shards) == 48
    by_bytes = {files.read(i): int(files.labels[i]) for i in range(len(files))}
    assert {shards.read(i): int(shards.labels[i]) for i in range(48)} == by_bytes
    with pytest.raises(ValueError, match="is remote; the random-access readers take files"):
        index_shards("https://host/{split}-{000..001}.tar", "train", tmp_path)


def test_class_list_selects_and_renumbers_classes(folder, tmp_path):
    listing = tmp_path / "subset.txt"
    listing.write_text("# two of three\nclass002\nclass000\n")
    files = index_images(folder, "test", tmp_path / "d", str(listing))
    assert files.classes == ["class000", "class002"] and files.labels.tolist() == [0] * 4 + [1] * 4
    memory = load_dataset("imagefolder", "test", tmp_path / "d", str(folder), 12, str(listing))
    assert memory.images.shape == (8, 3, 12, 12) and memory.labels.tolist() == [0] * 4 + [1] * 4
    listing.write_text("class009\n")
    with pytest.raises(ValueError, match=r"lacks: \['class009'\]"):
        index_images(folder, "train", tmp_path / "d", str(listing))


def test_memory_path_downsamples_varying_sizes_once_into_the_cache(folder, tmp_path):
    with pytest.raises(ValueError, match="differ in size.*data.image_size"):
        load_dataset("imagefolder", "train", tmp_path / "d", str(folder))
    data = load_dataset("imagefolder", "train", tmp_path / "d", str(folder), size=16)
    files = index_images(folder, "train", tmp_path / "d")
    assert data.images.shape == (48, 3, 16, 16)
    assert torch.equal(data.images[5], centre_view(TF.pil_to_tensor(files.open(5)), 16))
    assert any(p.name.endswith("-16px-train.pt") for p in (tmp_path / "d" / "cache").iterdir())


# --------------------------------------------------------------------------- views
def test_crop_boxes_per_image_sizes_equal_one_size_at_a_time():
    u = crop_uniforms(64, torch.Generator().manual_seed(0))
    heights = torch.randint(5, 300, (64,), generator=torch.Generator().manual_seed(1))
    widths = torch.randint(5, 300, (64,), generator=torch.Generator().manual_seed(2))
    both = crop_boxes(u, heights, widths, (0.08, 1.0), (3 / 4, 4 / 3))
    for n in range(64):
        one = crop_boxes(u[n : n + 1], int(heights[n]), int(widths[n]), (0.08, 1.0), (3 / 4, 4 / 3))
        assert torch.equal(both[n], one[0])


@pytest.mark.parametrize("scale,size", [((0.1, 0.6), 32), ((0.5, 1.0), 16)])
def test_worker_views_equal_the_tensor_path_and_torchvision(tmp_path, scale, size):
    """Crops drawn once, made by the workers (PIL crop + antialiased bilinear resize) and by the
    tensor path (grid_sample, no antialias) or torchvision (antialias): equal to uint8
    rounding where they should be (upsampling for the tensor path, always for torchvision)."""
    files = index_images(write_image_folder(tmp_path / "f", sizes=(32, 32)), "train", tmp_path)
    spec = AugmentSpec(crop_scale=scale)
    n = len(files)
    p = sample_params(spec, n, 32, 32, torch.Generator().manual_seed(0))
    made = torch.stack(
        [
            _Geometric(files, [spec], size)[(i, p.crop[i : i + 1], p.flip[i : i + 1], 0, 0)][0][0]
            for i in range(n)
        ]
    )
    images = torch.stack([TF.pil_to_tensor(files.open(i)) for i in range(n)])
    boxes = [[int(v) for v in box] for box in p.boxes]
    tv = torch.stack(
        [TF.resized_crop(images[i], *boxes[i], [size, size], antialias=True) for i in range(n)]
    )
    tv = torch.where(p.flip.view(-1, 1, 1, 1), tv.flip(-1), tv)
    assert (made.float() - tv.float()).abs().max() <= 1
    if size == 32:  # upsampling: no antialias to differ by
        ours = resized_crop(images.float(), p.boxes, size, p.flip)
        assert (made.float() - ours).abs().max() < 1


def test_stream_batches_equal_across_worker_counts_and_resume_points(folder, tmp_path):
    files = index_images(folder, "train", tmp_path).with_view(16)
    aug = MultiViewAugment((AugmentSpec(size=16),), 3)

    def views(workers, epoch, start, steps, in_workers=False):
        cpu = torch.device("cpu")
        src = StreamBatches(files, aug, Layout(8, 0, 1, 7, cpu), 16, workers, 2, in_workers)
        src.start_epoch(epoch, start)
        return [src.next_views() for _ in range(steps)]

    ref = views(0, 1, 0, 6)
    assert all(v.shape == (8, 3, 3, 16, 16) for v in ref)
    for a, b in zip(ref, views(2, 1, 0, 6), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ref, views(2, 1, 0, 6, in_workers=True), strict=True):  # the CPU route
        assert torch.equal(a, b)
    for a, b in zip(ref[3:], views(0, 1, 3, 3), strict=True):  # resumed mid-epoch
        assert torch.equal(a, b)
    assert not torch.equal(ref[0], views(0, 2, 0, 1)[0])  # another epoch, another order
    # each rank of two loads its half of the same global batch
    halves = []
    for rank in range(2):
        src = StreamBatches(files, aug, Layout(8, rank, 2, 7), 16, 0)
        src.start_epoch(1, 0)
        halves.append(src.next_views())
    torch.testing.assert_close(torch.cat(halves), ref[0])  # batched kernels: to float rounding


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_on_streamed_images_of_varying_size(folder, tmp_path, method):
    extra = {
        "byol": ["--method.momentum=0.99", "--model.predictor=32-16"],
        "simsiam": ["--model.predictor=32-16"],
        "matrix_ssl": ["--method.momentum=0.99", "--model.predictor=32-16"],
    }.get(method, [])
    cfg = _cfg(
        tmp_path,
        folder,
        f"--method.name={method}",
        "--method.loss={}",
        "--train.max_steps=3",
        *extra,
    )
    result = pretrain(cfg, progress=False)
    assert result.status == "max_steps" and result.splits.streamed
    values = list(_losses(result.run_dir).values())
    assert len(values) == 3 and all(np.isfinite(values))


def test_streamed_run_resumes_exactly_mid_epoch(folder, tmp_path):
    full = pretrain(_cfg(tmp_path, folder), progress=False)
    assert full.step == 2 * (43 // 8)
    stopped = pretrain(_cfg(tmp_path, folder, "--train.max_steps=7"), progress=False)
    resumed = pretrain(
        _cfg(tmp_path, folder, "--data.workers=2"), resume=stopped.run_dir, progress=False
    )
    assert resumed.step == full.step
    a, b = _losses(full.run_dir), _losses(stopped.run_dir)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_evaluation_reads_streamed_splits(folder, tmp_path):
    from manifold_ssl.evaluation.features import extract_features
    from manifold_ssl.models import build_backbone

    splits = load_splits(
        "imagefolder", str(tmp_path), str(folder), 0.25, loader="stream", image_size=16
    )
    assert splits.streamed and len(splits.train) == 36 and len(splits.val) == 12
    encoder = build_backbone("convnet", 3, width=4).eval()
    mean, std = splits.normalisation
    streamed = extract_features(encoder, splits.test, mean, std, batch_size=5, workers=2)
    loaded = extract_features(encoder, splits.test.load().images, mean, std)
    assert streamed.shape == (12, 16) and torch.allclose(streamed, loaded, atol=1e-5)


def test_two_process_ddp_streams_the_single_process_global_batch(folder, tmp_path):
    cfg = _cfg(tmp_path, folder, "--train.max_steps=6", "--data.workers=1", "--model.sync_bn=true")
    a, b = one_and_two_process_losses(cfg, tmp_path)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_unlabeled_images_join_pretraining_only():
    from manifold_ssl.data import DataSplits, ImageTensors

    def images(n, label):
        return ImageTensors(
            torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.full((n,), label), ["a"]
        )

    splits = DataSplits(images(5, 0), images(2, 0), images(3, 0), unlabeled=images(7, -1))
    pre = splits.pretraining()
    assert len(pre) == 12 and pre.labels.tolist() == [0] * 5 + [-1] * 7
    assert len(splits.train) == 5  # probes and evaluation keep the labelled split
