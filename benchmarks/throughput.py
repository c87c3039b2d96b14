"""Images per second of a full pretraining step on CIFAR-shaped data, and where the time goes.

Claim (issue 3): with the CPU CIFAR recipe at K = 2 views and batch 256, data + views cost at
most 15% of a step, and the tensor pipeline (uint8 tensor on the device, batched views) is at
least 3x faster than a per-image torchvision-transforms DataLoader producing the same views.

Columns: data+views (index a uint8 tensor, draw and apply K views), forward+backward of model and
objective, the objective alone (forward+backward on fixed embeddings), optimiser step, the whole
step, and the model's pure forward+backward on ready views (the limit). The DataLoader route is
PIL images -> v2.Compose(RandomResizedCrop, flip, ColorJitter, Grayscale, ToTensor, Normalize)
per image and view, batched by a DataLoader with 0 workers (the same CPU budget as the tensor
pipeline) and with 2 workers (this machine's cores, which a real step would then compete for).
OMP_WAIT_POLICY=PASSIVE; medians of --repeats steps after a warm-up; compare ratios.

    python benchmarks/throughput.py [--recipes cifar10_mmcr ...] [--views 2] [--batch 256]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.views import MultiViewAugment, preset
from manifold_ssl.run import build_method_for
from manifold_ssl.run.build import optimizer_for
from manifold_ssl.runinfo import run_metadata
from manifold_ssl.training import train_step


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def dataloader_views_per_s(
    images: np.ndarray, spec, views: int, batch: int, batches: int, workers: int
) -> float:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.RandomResizedCrop(32, scale=spec.crop_scale, antialias=False),
            v2.RandomHorizontalFlip(spec.flip_p),
            v2.RandomApply(
                [v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)],
                p=spec.jitter_p,
            ),
            v2.RandomGrayscale(spec.grayscale_p),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )

    class Views(Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            img = Image.fromarray(images[i])
            return torch.stack([tf(img) for _ in range(views)])

    loader = DataLoader(
        Views(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )
    it = iter(loader)
    next(it)  # start-up
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def bench(recipe: str, views: int, batch: int, repeats: int, images_u8: torch.Tensor) -> dict:
    cfg = apply_overrides(
        load_recipe(recipe), [f"--views.num_views={views}", f"--train.batch_size={batch}"]
    )
    if (
        cfg.method.name in ("barlow_twins", "vicreg", "byol", "simsiam", "matrix_ssl")
        and views != 2
    ):
        cfg = apply_overrides(cfg, ["--views.num_views=2"])
    k = cfg.views.num_views
    torch.manual_seed(0)
    method = build_method_for(cfg, 3)
    opt = optimizer_for(cfg, method)
    aug = MultiViewAugment(preset(cfg.views.preset), k)
    gen = torch.Generator().manual_seed(0)
    n = images_u8.shape[0]

    def data():
        idx = torch.randint(0, n, (batch,), generator=gen)
        return aug(images_u8[idx], gen)

    fixed_views = data()

    def fwd_bwd():
        loss, _, _ = method(fixed_views)
        opt.zero_grad(set_to_none=True)
        loss.backward()

    with torch.no_grad():
        z = method.online(fixed_views.flatten(0, 1)).view(batch, k, -1)

    def objective():
        zz = z.clone().requires_grad_(True)
        if method.spec.layout == "views":
            loss = method.loss_fn(zz)
        else:
            loss = method.loss_fn(zz[:, 0], zz[:, 1])
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()

    def pure_model():
        out = method.online(fixed_views.flatten(0, 1))
        opt.zero_grad(set_to_none=True)
        out.float().square().mean().backward()

    def full_step():
        train_step(method, opt, data())  # the loop's step: forward, backward, optimiser
        method.update_target(0, 1)

    t_data = median_time(data, repeats)
    t_fb = median_time(fwd_bwd, repeats)
    t_obj = median_time(objective, repeats)
    t_model = median_time(pure_model, repeats)
    t_step = median_time(full_step, repeats)
    return {
        "recipe": recipe,
        "method": cfg.method.name,
        "K": k,
        "batch": batch,
        "backbone": f"{cfg.model.backbone} width {cfg.model.width}",
        "data_views_ms": 1e3 * t_data,
        "fwd_bwd_ms": 1e3 * t_fb,
        "objective_ms": 1e3 * t_obj,
        "model_only_ms": 1e3 * t_model,
        "step_ms": 1e3 * t_step,
        "images_per_s": batch / t_step,
        "data_fraction": t_data / t_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=[
            "cifar10_mmcr",
            "cifar10_clamp",
            "cifar10_simclr",
            "cifar10_barlow_twins",
            "cifar10_byol",
            "cifar10_matrix_ssl",
        ],
    )
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loader-batches", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/throughput.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)  # CIFAR-shaped, HWC
    images_u8 = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    rows = [bench(r, args.views, args.batch, args.repeats, images_u8) for r in args.recipes]

    spec = preset("cifar")[0]
    aug = MultiViewAugment((spec,), args.views)
    gen = torch.Generator().manual_seed(1)
    t_tensor = median_time(
        lambda: aug(images_u8[torch.randint(0, 4096, (args.batch,), generator=gen)], gen),
        args.repeats,
    )
    tensor_rate = args.batch / t_tensor
    loader_rates = {
        w: dataloader_views_per_s(images, spec, args.views, args.batch, args.loader_batches, w)
        for w in (0, 2)
    }

    print(
        f"Pretraining step on CIFAR-shaped data, {torch.get_num_threads()} threads, "
        f"K={args.views}, batch {args.batch}, median of {args.repeats}"
    )
    print(
        f"{'recipe':>22} {'backbone':>18} | {'data+views':>10} {'fwd+bwd':>8} {'objective':>9} "
        f"{'model only':>10} {'step':>8} | {'img/s':>6} {'data %':>6}"
    )
    for r in rows:
        print(
            f"{r['recipe']:>22} {r['backbone']:>18} | {r['data_views_ms']:9.1f}ms "
            f"{r['fwd_bwd_ms']:6.0f}ms {r['objective_ms']:7.1f}ms {r['model_only_ms']:8.0f}ms "
            f"{r['step_ms']:6.0f}ms | {r['images_per_s']:6.1f} {100 * r['data_fraction']:5.1f}%"
        )
    print(f"\nviews of {args.batch} images x {args.views}: tensor pipeline {tensor_rate:.0f} img/s")
    for w, rate in loader_rates.items():
        print(
            f"  per-image DataLoader, {w} workers: {rate:.0f} img/s -> tensor pipeline "
            f"{tensor_rate / rate:.1f}x faster"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "meta": run_metadata(),
                "rows": rows,
                "tensor_views_images_per_s": tensor_rate,
                "dataloader_views_images_per_s": loader_rates,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
