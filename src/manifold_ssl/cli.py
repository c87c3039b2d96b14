"""``manifold-ssl`` command line; ``main(argv)`` runs it as a function."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__

if TYPE_CHECKING:
    from .config import Config
    from .data.splits import DataSplits
    from .methods import SSLMethod


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device(text: str) -> str:
    """A device name as ``train.device`` takes it (auto, cpu, cuda, cuda:N, mps)."""
    from .config import device_name

    expected = device_name(text)
    if expected:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return text


def _seed_list(text: str) -> list[int]:
    """``"0,1,2"``: distinct integer seeds."""
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers like 0,1,2, got {text!r}")
    return seeds


def _config_help() -> str:
    from .config import config_help

    return config_help()


def _int_list(text: str) -> list[int]:
    """``"16,32,64"``; ``"LO:HI"`` powers of two from LO; ``"LO:HI:N"`` N log-spaced integers."""
    try:
        parts = text.split(":")
        if len(parts) == 1:
            values = [int(v) for v in text.split(",") if v]
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
            values = [lo * 2**k for k in range(64) if lo * 2**k <= hi] if lo >= 1 else []
        elif len(parts) == 3:
            lo, hi, n = int(parts[0]), int(parts[1]), int(parts[2])
            if lo < 1 or hi < lo or n < 1:
                raise ValueError
            values = sorted({round(v) for v in np.geomspace(lo, hi, n)})
        else:
            raise ValueError
        if not values or min(values) < 1:
            raise ValueError
        return values
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers 'A,B,C', a powers-of-two range 'LO:HI', or N log-spaced "
            f"values 'LO:HI:N', got {text!r}"
        ) from None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .experiments.simulate import plot_simulation, simulate_uniform
    from .runinfo import make_run_dir, run_metadata, write_json
    from .training.distributed import DistContext, resolve_device

    config = {
        "P": args.P,
        "D": args.D,
        "repeats": args.repeats,
        "seed": args.seed,
        "max_min_dim": args.max_min_dim,
        "device": args.device,
    }
    resolve_device(args.device, DistContext())  # an absent device: an error, no directory
    run_dir = make_run_dir(args.out, "simulate")
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "meta.json", run_metadata(args.seed))
    result = simulate_uniform(progress=not args.quiet, **config)
    write_json(run_dir / "results.json", result.to_dict())
    figures = plot_simulation(result, run_dir)

    if result.skipped:
        print(f"skipped (min(P, D) > {result.max_min_dim}): {len(result.skipped)} cells")
    print(f"\nPretraining percent error of perfectly uniform centroids (mean of {args.repeats}):")
    print(f"{'D':>6} | {'P=D/4':>8} {'P=D':>8} {'P=4D':>8} | peak over P at")
    for d in result.D:
        row = [result.cell(ratio_p, d) for ratio_p in (d // 4, d, 4 * d)]
        vals = [f"{100 * c['percent_error_mean']:7.3f}%" if c else f"{'-':>8}" for c in row]
        cells = [result.cell(p, d) for p in result.P]
        best = max((c for c in cells if c), key=lambda c: c["percent_error_mean"], default=None)
        peak = f"P={best['P']}" if best else "-"
        if best and result.cell(d, d) is None:
            peak += " (P=D not computed)"
        print(f"{d:>6} | {' '.join(vals)} | {peak}")
    print(f"\nrun directory: {run_dir}")
    for f in [run_dir / "results.json", *figures]:
        print(f"  {f}")
    return 0


def _print_results(results: dict[str, dict[str, object]]) -> None:
    def pct(v: object) -> str:
        return f"{100 * v:7.2f}%" if isinstance(v, float) else f"{'-':>8}"

    from .evaluation.report import PROTOCOLS, zero_shot_line

    width = max([12, *(len(name) for name in results)])
    print(
        f"\n{'encoder':>{width}} | {'kNN val':>8} {'kNN test':>8} | {'lin val':>8} {'lin test':>8}"
    )
    for name, r in results.items():
        if name == "zero_shot":
            continue
        print(
            f"{name:>{width}} | {pct(r.get('knn_val_accuracy'))} "
            f"{pct(r.get('knn_test_accuracy'))} | "
            f"{pct(r.get('linear_val_accuracy'))} {pct(r.get('linear_test_accuracy'))}"
        )
    print(textwrap.fill(PROTOCOLS, 99))
    if "zero_shot" in results:
        print(zero_shot_line(results["zero_shot"]))


def _print_run(
    results: dict[str, dict[str, object]],
    extra: dict[str, object],
    run_dir: Path,
    report: str = "report.md",
) -> None:
    _print_results(results)
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(
        f"\nrun directory: {run_dir}\n  report: {run_dir / report}\n  curves: "
        f"{run_dir / 'curves.png'}\n  metrics: {run_dir / 'metrics.jsonl'}\n  checkpoint: "
        f"{run_dir / 'checkpoints' / 'last.pt'}"
    )


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import apply_overrides, load_recipe
    from .run import evaluate_run, final_percent_error, pretrain
    from .training.distributed import resolve_device, teardown_distributed

    if args.resume:
        from .config import RESUME_FREE_KEYS, is_free, read_run_config

        if args.recipe or not all(is_free(o, RESUME_FREE_KEYS) for o in args.overrides):
            raise ValueError(
                "--resume continues a run with its own config: give no recipe, and no overrides "
                f"but {', '.join(RESUME_FREE_KEYS)}"
            )
        # a stop condition holds for the invocation that gave it
        stops = [k for k in RESUME_FREE_KEYS if k.startswith("train.")]
        cfg = apply_overrides(read_run_config(args.resume, without=stops), args.overrides)
    else:
        cfg = apply_overrides(load_recipe(args.recipe or "digits_mmcr"), args.overrides)
    if not args.no_eval:  # evaluation after training prompts a multimodal method
        from .run.build import check_zero_shot_words

        check_zero_shot_words(cfg)
    result = pretrain(cfg, resume=args.resume, progress=not args.quiet)
    ctx = result.ctx
    if result.status != "finished" and ctx.is_main:
        print(
            f"stopped ({result.status}) at step {result.step}; resume with: "
            f"manifold-ssl pretrain --resume {result.run_dir}"
        )
    # a group the caller made (pretrain ends its own): what follows runs on rank 0 alone, and a
    # synchronised layer must not wait there for ranks that have returned
    teardown_distributed()
    if result.status != "finished" or not ctx.is_main or args.no_eval:
        return 0 if result.status in ("finished", "interrupted", "budget", "max_steps") else 1
    if result.splits.num_classes < 2:
        print(
            f"evaluation skipped: the dataset has one class ({result.splits.train.classes}), so "
            f"every classifier would score 100%; run directory: {result.run_dir}"
        )
        return 0
    device = str(resolve_device(cfg.train.device, ctx))
    extra = {
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "steps": result.step,
        "final percent error": final_percent_error(result.run_dir),
    }
    results = evaluate_run(
        cfg, result.method, result.splits, result.run_dir, device, extra, not args.quiet
    )
    _print_run(results, extra, result.run_dir)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import EVAL_FREE_KEYS, RESUME_FREE_KEYS, apply_overrides, is_free
    from .run import evaluate_run, final_percent_error, splits_of
    from .run.evaluate import result_stem
    from .run.record import RunDir, method_from_state
    from .training.distributed import DistContext, resolve_device

    run = RunDir(args.run_dir)
    run_dir = run.path
    cfg, state = run.trained(args.checkpoint)
    not_free = [o for o in args.overrides if not is_free(o, EVAL_FREE_KEYS)]
    if not_free:
        free = [k for k in EVAL_FREE_KEYS if k not in RESUME_FREE_KEYS]
        raise ValueError(
            f"evaluate takes overrides of {', '.join(free)} only (the run's training settings "
            f"are fixed by its checkpoint), got {' '.join(not_free)}"
        )
    overrides = [o.removeprefix("--") for o in args.overrides]
    cfg = apply_overrides(cfg, args.overrides)
    device = str(resolve_device(args.device or cfg.train.device, DistContext()))
    with run.lock():  # not while the run trains: its checkpoint is still moving
        splits = splits_of(cfg)
        method = method_from_state(cfg, state, splits, device, "evaluate")
        extra: dict[str, object] = {
            "method": cfg.method.name,
            "dataset": cfg.data.name,
            "steps": state["step"],
            "checkpoint": args.checkpoint,
            "final percent error": final_percent_error(run_dir),
        }
        if overrides:
            extra["evaluation overrides"] = " ".join(overrides)
        results = evaluate_run(
            cfg, method, splits, run_dir, device, extra, not args.quiet, overrides, args.checkpoint
        )
    _print_run(results, extra, run_dir, f"{result_stem('report', overrides, args.checkpoint)}.md")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.checkpoints:
        return _analyze_history(args)
    with contextlib.ExitStack() as lock:  # a run's lock, held until its report is written
        return _analyze(args, lock)


def _analyze_history(args: argparse.Namespace) -> int:
    from .experiments.history import analyze_history

    if not args.path or not Path(args.path).is_dir():
        raise ValueError("analyze --checkpoints takes a run directory")
    out = Path(args.out) if args.out else Path(args.path) / "analysis" / "history"
    rows = analyze_history(args.path, args.checkpoints, out)
    keys = ("percent_error", "effective_rank", "capacity", "knn_accuracy")
    print(f"{'checkpoint':>16} {'epoch':>6} " + " ".join(f"{k:>15}" for k in keys))
    for r in rows:
        values = " ".join(f"{r.get(f'probe/{k}', float('nan')):15.4g}" for k in keys)
        print(f"{r['checkpoint']:>16} {r['epoch']:>6} {values}")
    print(f"history: {out / 'history.json'}\nfigures: {out / 'probes.png'}")
    return 0


def _analyze(args: argparse.Namespace, lock: contextlib.ExitStack) -> int:
    import numpy as np

    from .config import config_from_dict, load_recipe
    from .data.splits import as_tensors
    from .data.views import MultiViewAugment
    from .experiments.analyze import analyze_features, analyze_model, write_analysis_report
    from .methods import SSLMethod
    from .run import splits_of
    from .run.build import view_specs
    from .run.record import RunDir, method_from_state
    from .training.checkpoint import load_checkpoint

    path = Path(args.path) if args.path else None
    if path is not None and path.suffix == ".npy":
        if not path.exists():
            raise FileNotFoundError(f"features file {path} does not exist")
        labels = np.load(args.labels) if args.labels else None
        result = analyze_features(
            np.load(path), labels, args.per_class, args.n_t, args.seed, args.projection_dim
        )
        out = Path(args.out or path.with_name(path.stem + "-analysis"))
        title = path.name
    else:
        if args.untrained:
            cfg, state, title = load_recipe(args.untrained), None, f"untrained {args.untrained}"
            out = Path(args.out or f"analysis-untrained-{Path(args.untrained).stem}")
        elif path is not None and path.is_dir():
            # not while the run trains (its checkpoint still moving): held until the report
            lock.enter_context(RunDir(path).lock())
            cfg, state = RunDir(path).trained("last.pt")
            title = path.name
            out = Path(args.out or path / "analysis")
        elif path is not None and path.suffix == ".pt":
            state = load_checkpoint(path)
            cfg, title = config_from_dict(state["config"]), path.name
            out = Path(args.out or path.with_name(path.stem + "-analysis"))
        else:
            raise ValueError(
                "analyze needs a run directory, a .pt checkpoint, a .npy of features, "
                "or --untrained RECIPE"
            )
        splits = splits_of(cfg)
        method = method_from_state(cfg, state, splits, "cpu", "analyze")
        test = as_tensors(splits.test)
        import torch

        torch.manual_seed(cfg.train.seed)  # the analysis's own draws
        specs = view_specs(cfg, splits)
        aug = MultiViewAugment(specs, args.n_augment)
        result = analyze_model(
            method.backbone,
            test.images,
            splits.test.labels,
            specs[0].mean,
            specs[0].std,
            aug,
            args.per_class,
            args.n_exemplars,
            args.n_augment,
            args.n_t,
            args.seed,
            progress=not args.quiet,
            projection_dim=args.projection_dim,
        )
        if isinstance(method, SSLMethod):  # the objective of image views (not image-caption)
            from .evaluation.coherence import weight_layers

            result["gradient_coherence"] = _coherence_of(method, splits, specs, cfg, args.seed)
            layers = weight_layers(method)
            result["gradient_coherence_layers"] = {"first": layers[0], "last": layers[-1]}
    figures = write_analysis_report(result, out, title)
    lock.close()  # before printing: the run is free again
    print(f"geometry report: {out / 'analysis.md'}")
    for f in [out / "analysis.json", *figures]:
        print(f"  {f}")
    return 0


def _coherence_of(
    method: SSLMethod, splits: DataSplits, specs: Any, cfg: Config, seed: int
) -> dict[str, float]:
    """Gradient coherence (Yerxa Fig. 3) of the objective on 16 test images of each of the
    first four classes, under the run's own views, with the shuffled-label control."""
    import torch

    from .data.splits import as_tensors
    from .data.views import MultiViewAugment
    from .evaluation.coherence import coherence_with_control

    labels = splits.test.labels
    pick = torch.cat([torch.nonzero(labels == c).flatten()[:16] for c in labels.unique()[:4]])
    gen = torch.Generator().manual_seed(seed)
    images = as_tensors(splits.test.subset(pick)).images
    views = MultiViewAugment(specs, cfg.views.num_views)(images, gen)
    method.eval()
    return coherence_with_control(method, lambda v: method(v)[0], views, labels[pick], seed)


def _cmd_losses(args: argparse.Namespace) -> int:
    from .losses import LOSSES

    for name, cls in sorted(LOSSES.items()):
        print(f"{name:16s} {getattr(cls, 'inputs', ''):6s} {_plain(cls.__doc__ or '')}")
    return 0


def _plain(doc: str) -> str:
    """A docstring's first line as plain text: ``code`` as code, :func:`f` as f, and the
    cross-references ("See :func:`f`.") dropped."""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    line = re.sub(r"[;.]?\s*[Ss]ee :\w+:`~?[\w.]+`\.?", ".", line)
    line = re.sub(r":\w+:`~?([\w.]+)`", r"\1", line)
    line = line.replace("``", "")
    return re.sub(r"\.\.+", ".", line).strip()


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import load_spec, run_sweep, sweep_status

    if args.spec == "status":
        if not args.dir:
            raise ValueError("usage: manifold-ssl sweep status DIR")
        counts = sweep_status(args.dir)
        total = sum(counts.values())
        print(f"{args.dir}: {total} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        return 0
    spec = load_spec(args.spec, args.grid)
    out = Path(args.out or Path("sweeps") / Path(args.spec).stem)
    slurm = {
        "partition": args.partition,
        "time": args.time,
        "gpus": args.gpus,
        "cpus": args.cpus,
        "wait": args.wait,
    }
    try:
        rows = run_sweep(spec, out, args.workers, args.launcher, slurm, progress=not args.quiet)
    except KeyboardInterrupt:  # the running trials have checkpointed (see _run_pool)
        print(f"\nsweep interrupted; the same command resumes it ({out})", file=sys.stderr)
        return 130
    if args.launcher == "local":
        done = sum(r["status"] == "done" for r in rows)
        print(f"{done}/{len(rows)} trials done; summary: {out / 'summary.csv'}")
        print(f"figures: manifold-ssl plot {out}")
    else:
        print(
            f"submitted; job ids in {out / 'jobs.json'}; progress: manifold-ssl sweep status {out}"
        )
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .experiments.plots import plot_run, plot_sweep
    from .experiments.sweep import summarise

    path = Path(args.dir)
    if (path / "sweep.json").exists():
        summarise(path)
        files = plot_sweep(path)
    elif (path / "metrics.jsonl").exists():
        files = plot_run(path)
    else:
        raise ValueError(f"{path} is neither a sweep directory (sweep.json) nor a run directory")
    for file in files:
        print(file)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_backbone

    out = export_backbone(args.run, args.format, args.out, args.overwrite, args.checkpoint)
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    print(f"{args.format} weights of {spec['backbone']}: {out}\n  {out}.json\nload them with:")
    print("  " + spec["load"].replace("\n", "\n  "))
    return 0


def _cmd_lm(args: argparse.Namespace) -> int:
    from .lm import LMConfig, compare

    base = LMConfig(
        task="text" if args.text else "arithmetic",
        text=args.text,
        steps=args.steps,
        batch=args.batch,
        mce_order=None if args.mce_order == 0 else args.mce_order,
        mce_weight=args.mce_weight,
    )
    compare(base, args.seeds, args.out, progress=not args.quiet)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .experiments.sweep import list_sweeps

    parser = argparse.ArgumentParser(
        prog="manifold-ssl",
        description="Multi-view self-supervised learning on the geometry of neural manifolds.",
    )
    parser.add_argument("--version", action="version", version=f"manifold-ssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="nuclear norm of perfectly uniform centroids vs its bound (Schaeffer App. B, Fig. 2)",
        description="Percent error of uniform random unit centroids over a P x D grid; writes "
        "JSON, a heatmap and Fig. 2-style line plots into a new run directory.",
    )
    sim.add_argument(
        "--P",
        type=_int_list,
        default=_int_list("16:8192"),
        help="numbers of centroids: '16,64,256', powers of two 'LO:HI', or N log-spaced "
        "values 'LO:HI:N' (the paper's grid is 10:10000:11; default 16:8192)",
    )
    sim.add_argument(
        "--D",
        type=_int_list,
        default=_int_list("16:8192"),
        help="embedding dimensions, same syntax (default 16:8192)",
    )
    sim.add_argument("--repeats", type=int, default=3, help="draws per cell (default 3)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--max-min-dim",
        dest="max_min_dim",
        type=int,
        default=1024,
        help="skip cells with min(P, D) above this (default 1024)",
    )
    sim.add_argument("--device", type=_device, default="cpu", help="torch device (default cpu)")
    sim.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run directory")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_cmd_simulate)

    pre = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (default: MMCR on digits), then evaluate it against baselines",
        description="Pretrain with a recipe (a packaged name or a YAML path; default "
        "digits_mmcr) and --section.key=value overrides; then kNN and linear-probe accuracy next "
        "to a random-init encoder and raw pixels. Under torchrun it runs DDP.",
    )
    pre.epilog = "config keys (--section.key=value; the recipe's values replace these defaults):\n"
    pre.epilog += _config_help()
    pre.formatter_class = argparse.RawDescriptionHelpFormatter
    pre.add_argument("recipe", nargs="?", help="recipe name or YAML path (default digits_mmcr)")
    pre.add_argument("--resume", help="continue the run in this directory exactly where it stopped")
    pre.add_argument("--no-eval", dest="no_eval", action="store_true", help="skip the evaluation")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser(
        "evaluate",
        help="evaluate a run directory's checkpoint",
        description="kNN and linear probe (and baselines, fine-tuning) of a run's checkpoint. "
        "--eval.key=value overrides change only the evaluation; the run's config is not edited.",
    )
    ev.add_argument("run_dir", help="a run directory (with config.yaml and checkpoints/)")
    ev.add_argument(
        "--checkpoint",
        default="last.pt",
        help="checkpoint in checkpoints/: last (default), best, epoch-<N> (train.keep_*)",
    )
    ev.add_argument(
        "--device",
        type=_device,
        default=None,
        help="torch device (default: the run's train.device)",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress output")
    ev.set_defaults(func=_cmd_evaluate)

    an = sub.add_parser(
        "analyze",
        help="geometry report: capacity/radius/dimension per layer, spectra, similarities, t-SNE",
        description="Analyse a run directory, a checkpoint, a .npy of features ((N, F) with "
        "--labels, or (P, m, F) manifolds), or an untrained model from a recipe.",
    )
    an.add_argument("path", nargs="?", help="run directory, .pt checkpoint or .npy features")
    an.add_argument("--labels", help=".npy of class ids for (N, F) features")
    an.add_argument("--untrained", metavar="RECIPE", help="analyse a randomly initialised model")
    an.add_argument("--out", help="report folder (default: next to the input)")
    an.add_argument(
        "--checkpoints",
        metavar="all|LIST",
        help="of a run directory: measure the training probes' geometry (capacity, effective "
        "rank, packing, gradient coherence with its control) at each kept checkpoint (all, or "
        "e.g. epoch-0010,best) and draw it against training (train.keep_every keeps them)",
    )
    an.add_argument(
        "--per-class",
        dest="per_class",
        type=_positive_int,
        default=None,
        help="images per class manifold (default 50, or the class size when smaller)",
    )
    an.add_argument(
        "--n-exemplars",
        dest="n_exemplars",
        type=_positive_int,
        default=50,
        help="images whose augmentation manifolds are measured (default 50)",
    )
    an.add_argument(
        "--n-augment",
        dest="n_augment",
        type=_positive_int,
        default=30,
        help="augmented views per exemplar (default 30)",
    )
    an.add_argument(
        "--n-t",
        dest="n_t",
        type=_positive_int,
        default=200,
        help="Gaussian samples t (default 200)",
    )
    an.add_argument("--seed", type=int, default=0, help="seed of sampling and projections")
    an.add_argument(
        "--projection-dim",
        dest="projection_dim",
        type=int,
        default=None,
        help="randomly project wider layers to this many dims first (Yerxa: 5000)",
    )
    an.add_argument("--quiet", action="store_true", help="no progress bars")
    an.set_defaults(func=_cmd_analyze)

    sw = sub.add_parser(
        "sweep",
        help="run a grid of trials (packaged name or YAML spec), resumably; or 'sweep status DIR'",
        description="Each trial is a run directory DIR/trials/<config hash>. Running a sweep "
        "again skips finished trials and resumes interrupted ones. Packaged: "
        f"{', '.join(list_sweeps())}.",
    )
    sw.add_argument("spec", help="sweep name or YAML path, or 'status'")
    sw.add_argument("dir", nargs="?", help="with 'status': the sweep directory")
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="replace or add a grid axis (P, D, K, seed or a dotted config key); repeatable",
    )
    sw.add_argument("--out", help="sweep directory (default sweeps/<spec name>)")
    sw.add_argument("--workers", type=_positive_int, default=1, help="local parallel trials")
    sw.add_argument("--launcher", choices=["local", "slurm"], default="local")
    sw.add_argument("--partition", help="slurm partition")
    sw.add_argument("--time", type=_positive_int, default=60, help="slurm minutes per job")
    sw.add_argument("--gpus", type=int, default=1, help="slurm GPUs per trial")
    sw.add_argument("--cpus", type=_positive_int, default=8, help="slurm CPUs per trial")
    sw.add_argument("--wait", action="store_true", help="slurm: wait for the jobs to end")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=_cmd_sweep)

    pl = sub.add_parser(
        "plot",
        help="figures of a sweep (Fig. 3 double descent, P x D heat map, Fig. 4 scaling fits) "
        "or of a run's probes (geometry over training, CLAMP packing dynamics)",
        description="Figures and their data. A sweep directory: DIR/figures/ (Schaeffer et al. "
        "Figs. 3-5 and 7; one sub-folder per value of every grid axis the figures do not draw, "
        "such as optim.lr or recipe). A run directory: DIR/figures/probes.png (and CLAMP's "
        "clamp_dynamics.png) from its probes.",
    )
    pl.add_argument("dir", help="a sweep or run directory")
    pl.set_defaults(func=_cmd_plot)

    ex = sub.add_parser(
        "export",
        help="the pretrained backbone as a state dict that torchvision or timm loads",
        description="Write the backbone of a run (or checkpoint) as a plain state dict: "
        "torchvision or timm keys (the classifier is the only missing key), or its own keys; "
        "FILE.json says how to build the model that loads it.",
    )
    ex.add_argument("run", help="a run directory or a checkpoint .pt")
    ex.add_argument(
        "--checkpoint",
        default="last.pt",
        help="of a run directory: last (default), best, epoch-<N> (train.keep_*)",
    )
    ex.add_argument("--format", choices=["torchvision", "timm", "state_dict"], required=True)
    ex.add_argument(
        "--out", required=True, help="the .pt file to write (a directory: RUN-FORMAT.pt in it)"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ex.set_defaults(func=_cmd_export)

    sub.add_parser(
        "openclip",
        help="OpenCLIP's trainer (open_clip_train) with multimodal MMCR or CLIP: "
        "manifold-ssl openclip --loss multimodal_mmcr -- <open_clip_train arguments>",
        add_help=False,
    )

    about = (
        "a small language model trained with CE vs CE + matrix cross-entropy "
        "(Matrix-SSL App. B) over seeds: exact match on generated arithmetic word problems, "
        "or bits per character of --text"
    )
    lm = sub.add_parser(
        "lm",
        help=about,
        description=about[0].upper() + about[1:] + ". Each objective × seed is a resumable run "
        "under --out; summary.md compares them (mean ± 95%% t-interval over seeds).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    lm.add_argument("--text", help="a UTF-8 text file, or .gz (default: arithmetic problems)")
    lm.add_argument("--seeds", type=_seed_list, default=[0, 1, 2], help="distinct seeds, 0,1,2")
    lm.add_argument("--steps", type=_positive_int, default=400, help="optimiser steps per run")
    lm.add_argument("--batch", type=_positive_int, default=16, help="windows per step")
    lm.add_argument(
        "--mce-order", type=int, default=4, help="Taylor order of log Q (0: exact eigen-log)"
    )
    lm.add_argument("--mce-weight", type=float, default=1.0, help="CE + weight · MCE (Eq. 23: 1)")
    lm.add_argument("--out", default="runs/lm", help="folder of the runs and summary")
    lm.add_argument("--quiet", action="store_true")
    lm.set_defaults(func=_cmd_lm)

    recipes = sub.add_parser("recipes", help="list the packaged recipes")
    recipes.set_defaults(
        func=lambda a: (
            print("\n".join(__import__("manifold_ssl.config", fromlist=["x"]).list_recipes())) or 0
        )
    )

    losses = sub.add_parser("losses", help="list the registered objectives")
    losses.set_defaults(func=_cmd_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["openclip"]:  # its own parser: the rest goes to open_clip_train
        from .openclip import main as openclip_main

        try:
            return openclip_main(argv[1:])
        except (ValueError, OSError, ImportError) as err:
            print(f"manifold-ssl openclip: error: {_one_line(err)}", file=sys.stderr)
            return 2
    # --section.key=value overrides are taken out first: argparse mistakes values with spaces
    # ("--eval.semi_supervised=[0.01, 0.1]") for positionals
    overrides = [a for a in argv if re.match(r"^--[A-Za-z_]+\.[A-Za-z_.]+=", a)]
    args, unknown = parser.parse_known_args([a for a in argv if a not in overrides])
    if args.command == "pretrain":
        args.overrides = overrides + unknown
    elif args.command == "evaluate" and not unknown:
        args.overrides = overrides
    elif unknown or overrides:
        unknown += overrides
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args))
    except (ValueError, OSError) as err:  # bad input, full disk: one clear line, no traceback
        print(f"manifold-ssl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a non-finite loss: the run kept its last checkpoint
        print(f"manifold-ssl {args.command}: error: {err}", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The error's message; from a DataLoader worker (which wraps it in "Caught ValueError in
    DataLoader worker process 0. Original Traceback ..."), the original message alone."""
    text = str(err)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        return last.partition(": ")[2] or last
    return text


if __name__ == "__main__":
    raise SystemExit(main())
