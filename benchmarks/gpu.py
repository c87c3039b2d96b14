"""The prepared GPU benchmark: what a CIFAR-10 pretraining step costs on one GPU.

    PYTHONPATH=src python3 benchmarks/gpu.py --data ../shared/data/cifar10-jpg.tar.gz

Needs only PyTorch, torchvision, NumPy, SciPy, scikit-learn, Pillow, PyYAML, tqdm and matplotlib
(no install, no network); CIFAR-10 JPEGs at ``--data`` (an image-folder archive), synthetic
images if there are none. It stops itself inside ``--budget-s`` (sections that would not fit
are skipped and say so) and writes ``--out`` (JSON) and the same path with ``.md`` (a table).

Measured, for ResNet-18 with the CIFAR stem at width 64 (``--width``), global batch
``--batch``:

* images/s of ``manifold_ssl.training.pretrain`` (the memory loader: views made on the GPU)
  for MMCR at K = 2, 8, 40 and SimCLR at K = 2, in float32 and in bf16 autocast with
  channels-last (and for MMCR K = 2 ``torch.compile`` of the model and ``train.compile=step``,
  the whole step as one graph, a CUDA graph on CUDA), and in bf16 at ``--batch-large`` (512,
  lightly's batch; MMCR and SimCLR, MMCR also compiled whole), averaged over the logged windows
  after warm-up; TFLOP/s from our FLOP count and MFU against the device's dense peak (known
  H100/H200/A100 parts, or ``--peak-tflops``); peak GPU memory; host synchronisations per step (``torch.cuda.set_sync_debug_mode``
  counts them: every one is a warning);
* the objective's share of a step: its forward and backward on embeddings of the step's
  shape, timed with CUDA events, against the step's time; MMCR K = 8 also with the matmul-only
  nuclear norm (``--method.loss.nuclear=polar``, Newton–Schulz in float32, no ``eigh``), whose
  host synchronisations per step should be 0;
* a baseline loop written the way solo-learn and lightly users run it: torchvision v2
  transforms per image in DataLoader workers, the same model and loss, bf16 autocast, as a
  ratio to ours;
* the time of ``evaluate`` (kNN and linear probe, no baselines) on the GPU.

On a machine without CUDA it runs the same sections on the CPU at whatever size it is given
(``tests/test_gpu_benchmark.py`` runs it tiny, so that it cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from manifold_ssl.config import Config, apply_overrides, load_recipe  # noqa: E402
from manifold_ssl.run import build_method_for  # noqa: E402
from manifold_ssl.run import train as run_train  # noqa: E402
from manifold_ssl.runinfo import read_metrics  # noqa: E402
from manifold_ssl.training import loop  # noqa: E402

CASES = [  # (label, recipe, K)
    ("MMCR K=2", "cifar10_mmcr", 2),
    ("MMCR K=8", "cifar10_mmcr", 8),
    ("MMCR K=40", "cifar10_mmcr", 40),
    ("SimCLR K=2", "cifar10_simclr", 2),
]


#: dense peak TFLOP/s by device-name fragment: (bf16, tf32), from the vendors' data sheets (SXM
#: parts; a PCIe part has less). MFU is our FLOP count (torch's FlopCounterMode on one step,
#: ``flops`` in metrics.jsonl) over the time, against the precision's peak; absent for others.
PEAK_TFLOPS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0)}


def peak_tflops(device: str, precision: str, given: float | None) -> float | None:
    if given:
        return given
    for name, (bf16, tf32) in PEAK_TFLOPS.items():
        if name in device:
            return bf16 if precision.startswith("bf16") else tf32
    return None


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def config(args: argparse.Namespace, recipe: str, k: int, *extra: str) -> Config:
    data = (
        [
            "--data.name=imagefolder",
            f"--data.path={args.data}",
            "--data.loader=memory",
            "--data.image_size=32",
        ]
        if args.data
        else []
    )
    return apply_overrides(
        load_recipe(recipe),
        [
            *data,
            f"--data.root={args.root}",
            f"--train.out_dir={args.root}/runs",
            f"--views.num_views={k}",
            "--model.backbone=resnet18",
            f"--model.width={args.width}",
            f"--train.batch_size={args.batch}",
            f"--train.max_steps={args.steps}",
            "--train.epochs=1000",
            f"--train.log_every={args.window}",
            "--train.knn_every=0",
            "--train.checkpoint_every=100000",
            f"--train.device={args.device}",
            *extra,
        ],
    )


def throughput(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """images/s of pretrain (after the first window), peak memory and syncs per step."""
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    syncs: list[int] = []
    original = loop._Trainer.train_step

    def counted(self: Any) -> dict[str, Any]:  # syncs inside ordinary steps only
        if not cuda or self.step < args.window:
            return original(self)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(self)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                syncs.append(sum("synchroniz" in str(w.message) for w in caught))

    loop._Trainer.train_step = counted  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        result = run_train(cfg, progress=False)
        wall = time.perf_counter() - t0
    finally:
        loop._Trainer.train_step = original  # type: ignore[method-assign]
    records = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]
    timed = [r for r in records if r["step"] > args.window and r["step"] % args.window == 0]
    rate = [r["images_per_s"] for r in timed] or [records[-1]["images_per_s"]]
    return {
        "images_per_s": sum(rate) / len(rate),
        "steps": result.step,
        "wall_s": wall,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "syncs_per_step": sum(syncs) / len(syncs) if syncs else None,
        "final_loss": records[-1]["loss"],
        "step_flops": records[-1]["flops"] / max(records[-1]["step"], 1),
    }


def objective_ms(args: argparse.Namespace, cfg: Config) -> float:
    """Forward + backward of the objective alone on (B, K, D) embeddings, in milliseconds."""
    from manifold_ssl.losses import LOSSES

    device = torch.device(args.device)
    dim = int(cfg.model.projector.split("-")[-1])
    z = torch.randn(cfg.train.batch_size, cfg.views.num_views, dim, device=device)
    z.requires_grad_(True)
    loss_fn = LOSSES[cfg.method.name](**cfg.method.loss)

    def once() -> None:
        loss_fn(z).backward()

    for _ in range(3):
        once()
    reps = 10
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            once()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    return 1e3 * (time.perf_counter() - t0) / reps


def baseline(args: argparse.Namespace, cfg: Config, splits: Any) -> dict[str, Any]:
    """The same model and loss fed as solo-learn/lightly users feed it: torchvision v2
    transforms per image in DataLoader workers, bf16 autocast on CUDA."""
    from torchvision.transforms import v2

    from manifold_ssl.data.splits import as_tensors

    images = as_tensors(splits.train).images  # uint8 (N, 3, 32, 32)
    mean, std = splits.normalisation
    k = cfg.views.num_views
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )

    class Views(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.stack([transform(images[i]) for _ in range(k)])

    cuda = args.device.startswith("cuda")
    loader = torch.utils.data.DataLoader(
        Views(),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=cuda,
        persistent_workers=args.workers > 0,
    )
    device = torch.device(args.device)
    method = build_method_for(cfg, 3, image_size=32).to(device)
    if cuda:
        method.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    it = iter(loader)
    done, t0 = 0, 0.0
    for step in range(args.steps):
        if step == args.window:  # warm-up over: time the rest
            if cuda:
                torch.cuda.synchronize()
            t0, done = time.perf_counter(), 0
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = method(x)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += x.shape[0]
    if cuda:
        torch.cuda.synchronize()
    return {"images_per_s": done / (time.perf_counter() - t0), "workers": args.workers}


def evaluate_seconds(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    from manifold_ssl.run import evaluate_run

    ecfg = apply_overrides(cfg, ["--eval.baselines=false"])
    result = run_train(apply_overrides(ecfg, ["--train.max_steps=1"]), progress=False)
    t0 = time.perf_counter()
    results = evaluate_run(
        ecfg, result.method, result.splits, result.run_dir, args.device, {}, progress=False
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    pre = results["pretrained"]
    return {
        "seconds": time.perf_counter() - t0,
        "train_images": len(result.splits.train.labels),
        "knn_test_accuracy": pre.get("knn_test_accuracy"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 JPEG archive or folder (synthetic if none)")
    parser.add_argument("--out", default="benchmarks/results/gpu.json")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="steps per throughput run")
    parser.add_argument("--window", type=int, default=10, help="steps per timed window")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--views", default="2,8,40", help="MMCR view counts to run")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--batch-large", type=int, default=512, help="also bf16 at this batch (0: not)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak for MFU (default: known GPUs)"
    )
    parser.add_argument(
        "--precision", choices=["both", "float32", "bf16"], default="both", help="which to run"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline loop")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the evaluate timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", help="data cache and runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    budget = Budget(args.budget_s)
    if args.data and not Path(args.data).exists():
        say(f"{args.data} not found: synthetic images instead")
        args.data = None
    tmp = tempfile.TemporaryDirectory()
    args.root = args.root or tmp.name
    if not args.data:  # a synthetic image folder of CIFAR's shape
        from manifold_ssl.data.synthetic import write_image_folder

        most = max(args.batch, args.batch_large)
        per = {"train": max(most * 3 // 10, 8), "test": max(most // 10, 4)}
        args.data = str(write_image_folder(Path(args.root) / "synthetic", 10, per, (32, 32)))
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    views = {int(v) for v in args.views.split(",")}
    device = args.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    out: dict[str, Any] = {
        "device": name or device,
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "root"},
        "throughput": [],
        "skipped": [],
    }
    say(f"device {out['device']}, torch {torch.__version__}, budget {args.budget_s:.0f} s")
    precisions = [
        ("float32", []),
        (
            "bf16+channels_last",
            ["--train.amp=true", "--train.channels_last=true", "--train.amp_cpu=true"],
        ),
    ]
    wanted = {"both": precisions, "float32": precisions[:1], "bf16": precisions[1:]}
    plan = [
        (label, recipe, k, prec, extra)
        for label, recipe, k in CASES
        if recipe != "cifar10_mmcr" or k in views
        for prec, extra in wanted[args.precision]
    ]
    if args.precision != "float32":  # at K = 8 (the smallest K asked for without it)
        k = 8 if 8 in views else min(views)
        polar = [*precisions[1][1], "--method.loss.nuclear=polar"]
        plan.append((f"MMCR K={k}", "cifar10_mmcr", k, "bf16+channels_last+polar", polar))
    if not args.no_compile and 2 in views:
        for mode in ("true", "step"):  # the model compiled; the whole step (a CUDA graph)
            name = "compile" if mode == "true" else "compile=step"
            extra = [*precisions[1][1], f"--train.compile={mode}"]
            plan.append(("MMCR K=2", "cifar10_mmcr", 2, f"bf16+channels_last+{name}", extra))
    if args.batch_large and args.precision != "float32":  # lightly's batch, beside --batch
        large = [*precisions[1][1], f"--train.batch_size={args.batch_large}"]
        for label, recipe in (("MMCR K=2", "cifar10_mmcr"), ("SimCLR K=2", "cifar10_simclr")):
            plan.append((label, recipe, 2, f"bf16+channels_last, batch {args.batch_large}", large))
        if not args.no_compile:
            step = [*large, "--train.compile=step"]
            prec = f"bf16+channels_last+compile=step, batch {args.batch_large}"
            plan.append(("MMCR K=2", "cifar10_mmcr", 2, prec, step))
    splits = None
    for label, recipe, k, prec, extra in plan:
        if budget.left() < 60:
            out["skipped"].append(f"{label} {prec}")
            continue
        cfg = config(args, recipe, k, *extra)
        say(f"{label} {prec}: pretrain {args.steps} steps of {args.batch} images")
        row = {"case": label, "precision": prec, **throughput(args, cfg)}
        row["batch"] = cfg.train.batch_size
        row["tflops"] = row["step_flops"] * row["images_per_s"] / cfg.train.batch_size / 1e12
        peak = peak_tflops(out["device"], prec, args.peak_tflops)
        row["mfu"] = row["tflops"] / peak if peak else None
        if prec != "float32" or k == 2:
            row["objective_ms"] = objective_ms(args, cfg)
            row["objective_share"] = row["objective_ms"] / (
                1e3 * cfg.train.batch_size / row["images_per_s"]
            )
        say(
            f"  {row['images_per_s']:.0f} images/s, syncs/step {row['syncs_per_step']}, "
            f"peak {row['peak_memory_gb']} GB"
        )
        out["throughput"].append(row)
        write(out, args.out)
    for k in sorted(views & {2, 8} if not args.no_baseline else set()):
        if budget.left() < 90:
            out["skipped"].append(f"baseline K={k}")
            continue
        cfg = config(args, "cifar10_mmcr", k)
        if splits is None:
            from manifold_ssl.run import splits_of

            splits = splits_of(cfg)
        say(f"baseline loop (torchvision v2 per image, {args.workers} workers) MMCR K={k}")
        base = baseline(args, cfg, splits)
        ours = [
            r
            for r in out["throughput"]
            if r["case"] == f"MMCR K={k}" and r["precision"] == "bf16+channels_last"
        ]
        if ours:
            base["ours_over_baseline"] = ours[0]["images_per_s"] / base["images_per_s"]
        out[f"baseline_K{k}"] = base
        say(f"  {base['images_per_s']:.0f} images/s")
        write(out, args.out)
    if args.no_evaluate:
        pass
    elif budget.left() > 60:
        say("evaluate (kNN + linear probe) of a 1-step MMCR K=2 run")
        out["evaluate"] = evaluate_seconds(args, config(args, "cifar10_mmcr", 2))
        say(f"  {out['evaluate']['seconds']:.1f} s")
    else:
        out["skipped"].append("evaluate")
    out["elapsed_s"] = time.perf_counter() - budget.start
    write(out, args.out)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


def write(out: dict[str, Any], path: str) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# GPU benchmark: {out['device']} (torch {out['torch']})",
        "",
        "| case | precision | batch | images/s | TFLOP/s | MFU | syncs/step | peak GB "
        "| objective ms | objective share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in out["throughput"]:
        obj = r.get("objective_ms")
        share = r.get("objective_share")
        lines.append(
            f"| {r['case']} | {r['precision']} | {r['batch']} | {r['images_per_s']:.0f} | "
            f"{r['tflops']:.2f} | {_pct(r['mfu'])} | "
            f"{_fmt(r['syncs_per_step'])} | {_fmt(r['peak_memory_gb'])} | {_fmt(obj)} | "
            f"{'-' if share is None else f'{100 * share:.1f}%'} |"
        )
    for key in ("baseline_K2", "baseline_K8"):
        if key in out:
            b = out[key]
            lines.append(
                f"\nBaseline ({key[-2:]}, torchvision v2 per image in {b['workers']} workers, "
                f"bf16): {b['images_per_s']:.0f} images/s; ours / baseline: "
                f"{_fmt(b.get('ours_over_baseline'))}"
            )
    if "evaluate" in out:
        e = out["evaluate"]
        lines.append(
            f"\nevaluate (kNN + linear probe, {e['train_images']} training images): {e['seconds']:.1f} s"
        )
    if out["skipped"]:
        lines.append(f"\nskipped (budget): {', '.join(out['skipped'])}")
    file.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    raise SystemExit(main())
