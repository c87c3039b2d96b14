"""The streaming data path against torchvision's per-image route, and its memory at 10× data.

1. Throughput: K = 2 views of 224 px with the ``imagenet`` preset (BYOL's pair: blur on view 1,
   blur and solarisation on view 2) from a generated ImageNet-like folder of JPEGs of varying
   size, at equal DataLoader workers:
   * ``torchvision``: ``ImageFolder`` + a per-image ``transforms.v2`` pipeline per view
     (``RandomResizedCrop``, flip, ``RandomApply(ColorJitter)``, ``RandomGrayscale``,
     ``GaussianBlur``, ``RandomSolarize``, normalise), all in the workers;
   * ``stream``: manifold-ssl's ``StreamBatches``: crop + resize + flip per image in the workers,
     the photometric part batched on the device (here the CPU; on a GPU it leaves the workers
     only the decoding and cropping).
   Views per second over ``--batches`` batches after one warm-up batch, the same batches for both.
2. Peak memory of a streaming run (main process + workers, max RSS) over N and 10 N images
   (the 10 N folder repeats the N files through hard links): it must not grow with the data.

    python benchmarks/data_stream.py [--images 2000] [--workers 2] [--out results/data_stream.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from manifold_ssl.data.files import index_images
from manifold_ssl.data.stream import Layout, StreamBatches
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.data.views import AugmentSpec, MultiViewAugment, dataset_preset
from manifold_ssl.runinfo import run_metadata, write_json

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_folder(root: Path, images: int, classes: int = 10) -> Path:
    if not (root / "train").exists():
        per = images // classes
        write_image_folder(root, classes, {"train": per}, (180, 500), seed=0, quality=90)
    return root


def repeat_folder(src: Path, dst: Path, times: int) -> Path:
    """``dst``: every file of ``src`` ``times`` over, hard-linked (no extra disk, 10× the index)."""
    if not (dst / "train").exists():
        for file in sorted((src / "train").rglob("*.jpg")):
            folder = dst / "train" / file.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            for r in range(times):
                os.link(file, folder / f"{r}-{file.name}")
    return dst


def torchvision_pipeline(spec: AugmentSpec):
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(spec.size, spec.crop_scale, spec.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(spec.flip_p),
            v2.RandomApply(
                [v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)],
                p=spec.jitter_p,
            ),
            v2.RandomGrayscale(spec.grayscale_p),
            v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, spec.blur_sigma)], p=spec.blur_p),
            v2.RandomSolarize(128, p=spec.solarize_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )


class KViews:
    def __init__(self, specs: tuple[AugmentSpec, ...]) -> None:
        self.pipes = [torchvision_pipeline(s) for s in specs]

    def __call__(self, image):
        return torch.stack([p(image) for p in self.pipes])


def specs() -> tuple[AugmentSpec, ...]:
    return dataset_preset("imagenet", MEAN, STD, size=224)


def time_torchvision(folder: Path, batch: int, batches: int, workers: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(folder / "train"), transform=KViews(specs()))
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        prefetch_factor=2,
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    next(it)  # warm-up: workers started
    start = time.perf_counter()
    for _ in range(batches):
        views, _ = next(it)
    return batches * batch * views.shape[1] / (time.perf_counter() - start)


def stream_source(
    folder: Path, root: Path, batch: int, workers: int, in_workers: bool = True
) -> StreamBatches:
    files = index_images(folder, "train", root).with_view(224)
    aug = MultiViewAugment(specs(), 2)
    return StreamBatches(files, aug, Layout(batch), 224, workers, 2, in_workers)


def time_stream(
    folder: Path, root: Path, batch: int, batches: int, workers: int, in_workers: bool
) -> float:
    src = stream_source(folder, root, batch, workers, in_workers)
    src.start_epoch(0, 0)
    src.next_views()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        views = src.next_views()
    return batches * batch * views.shape[1] / (time.perf_counter() - start)


def peak_memory(folder: Path, root: Path, batch: int, batches: int, workers: int) -> dict:
    """Run ``batches`` streamed batches in a fresh process; its and its workers' max RSS."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys, json, resource; sys.path.insert(0, {here!r})\n"
        "from data_stream import stream_source\n"
        "from pathlib import Path\n"
        f"src = stream_source(Path({str(folder)!r}), Path({str(root)!r}), {batch}, {workers})\n"
        "src.start_epoch(0, 0)\n"
        f"for _ in range({batches}): src.next_views()\n"
        "del src\n"
        "print(json.dumps({'main_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "'worker_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--work", type=Path, default=Path("results/data_stream"))
    parser.add_argument("--out", type=Path, default=Path("results/data_stream.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process shares the cores with the workers
    folder = make_folder(args.work / "imagenet_like", args.images)
    big = repeat_folder(folder, args.work / "imagenet_like_x10", 10)
    root = args.work / "data"
    n, n10 = len(index_images(folder, "train", root)), len(index_images(big, "train", root))

    b, nb, w = args.batch, args.batches, args.workers
    rows = {
        "torchvision ImageFolder + per-image v2": time_torchvision(folder, b, nb, w),
        "manifold-ssl stream (views in workers)": time_stream(folder, root, b, nb, w, True),
        "manifold-ssl stream (photometric in main)": time_stream(folder, root, b, nb, w, False),
    }
    memory = {
        f"{n} images": peak_memory(folder, root, args.batch, args.batches, args.workers),
        f"{n10} images": peak_memory(big, root, args.batch, args.batches, args.workers),
    }
    print(
        f"\nK = 2 views of 224 px (imagenet preset), batch {args.batch}, {args.workers} workers, "
        f"{n} JPEGs of 180-500 px"
    )
    print(f"{'route':42s} {'views/s':>9s}")
    for name, v in rows.items():
        print(f"{name:42s} {v:9.1f}")
    ratio = (
        rows["manifold-ssl stream (views in workers)"]
        / rows["torchvision ImageFolder + per-image v2"]
    )
    print(f"stream / torchvision: {ratio:.2f}x")
    print(f"\n{'data set':16s} {'main max RSS (MB)':>18s} {'workers max RSS (MB)':>21s}")
    for name, m in memory.items():
        print(f"{name:16s} {m['main_mb']:18.0f} {m['worker_mb']:21.0f}")
    write_json(
        args.out,
        {
            "throughput_views_per_s": rows,
            "ratio": ratio,
            "peak_memory_mb": memory,
            "settings": vars(args) | {"work": str(args.work), "out": str(args.out)},
            "meta": run_metadata(0),
        },
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
