"""``manifold-ssl`` command line; ``main(argv)`` runs it as a function."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .config import Config


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
    from ._keys import device_name

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


def _cmd_simulate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .experiments.simulate import plot_simulation, simulate_uniform
    from .runinfo import make_run_dir, run_metadata, write_json
    from .training.distributed import DistContext, resolve_device

    config = asdict(args.settings)
    resolve_device(args.settings.device, DistContext())  # an absent device: no directory
    run_dir = make_run_dir(args.out, "simulate")
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "meta.json", run_metadata(args.settings.seed))
    result = simulate_uniform(progress=not args.quiet, **config)
    write_json(run_dir / "results.json", result.to_dict())
    figures = plot_simulation(result, run_dir)

    if result.skipped:
        print(f"skipped (min(P, D) > {result.max_min_dim}): {len(result.skipped)} cells")
    print(f"\nPretraining percent error of uniform centroids (mean of {result.repeats}):")
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

    from .evaluation.report import PROTOCOLS, transfer_line, zero_shot_line

    rows = {name: r for name, r in results.items() if not name.startswith("zero_shot")}
    width = max([12, *(len(name) for name in rows)])
    if not rows:  # a one-class (caption-only) run: no kNN or probe table, only zero-shot
        print("\nno kNN or linear-probe table: the run's data has one class; evaluated by:")
    else:
        print(
            f"\n{'encoder':>{width}} | {'kNN val':>8} {'kNN test':>8} | "
            f"{'lin val':>8} {'lin test':>8}"
        )
    for name, r in rows.items():
        print(
            f"{name:>{width}} | {pct(r.get('knn_val_accuracy'))} "
            f"{pct(r.get('knn_test_accuracy'))} | "
            f"{pct(r.get('linear_val_accuracy'))} {pct(r.get('linear_test_accuracy'))}"
        )
    if rows:
        print(textwrap.fill(PROTOCOLS, 99))
    if "zero_shot" in results:
        print(zero_shot_line(results["zero_shot"]))
    if "zero_shot_transfer" in results:
        print(transfer_line(results["zero_shot_transfer"]))


def _print_run(
    results: dict[str, dict[str, object]],
    extra: dict[str, object],
    run_dir: Path,
    report: str = "report.md",
    checkpoint: str = "last.pt",
) -> None:
    from .run.record import RunDir

    _print_results(results)
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(
        f"\nrun directory: {run_dir}\n  report: {run_dir / report}\n  curves: "
        f"{run_dir / 'curves.png'}\n  metrics: {run_dir / 'metrics.jsonl'}\n  checkpoint: "
        f"{RunDir(run_dir).checkpoint_file(checkpoint)}"
    )


def _run_config(args: argparse.Namespace) -> Config:
    """The config of ``pretrain`` and ``launch``: a recipe with overrides, or with ``--resume``
    the run's own (the stop conditions and data-reading keys may be given again)."""
    from .config import apply_overrides, load_recipe

    if not args.resume:
        return apply_overrides(load_recipe(args.recipe or "digits_mmcr"), args.overrides)
    from .config import RESUME_FREE_KEYS, is_free, read_run_config

    if args.recipe or not all(is_free(o, RESUME_FREE_KEYS) for o in args.overrides):
        raise ValueError(
            "--resume continues a run with its own config: give no recipe, and no overrides "
            f"but {', '.join(RESUME_FREE_KEYS)}"
        )
    # a stop condition holds for the invocation that gave it
    stops = [k for k in RESUME_FREE_KEYS if k.startswith("train.")]
    return apply_overrides(read_run_config(args.resume, without=stops), args.overrides)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .run.pipeline import run
    from .training.checkpoint import resume_command

    cfg = _run_config(args)
    resume = "yes" if args.resume else "no"
    done = run(cfg, args.resume, resume=resume, evaluate=not args.no_eval, progress=not args.quiet)
    result = done.result
    if result.status != "finished" and result.ctx.is_main:
        print(
            f"stopped ({result.status}) at step {result.step}; resume with: "
            f"{resume_command(result.run_dir)}"
        )
    if done.skipped:
        print(f"evaluation skipped: {done.skipped}; run directory: {result.run_dir}")
    if done.results is not None:
        _print_run(done.results, done.extra, result.run_dir)
    return 0 if result.status in ("finished", "interrupted", "budget", "max_steps") else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import EVAL_FREE_KEYS, RESUME_FREE_KEYS, apply_overrides, is_free
    from .run import evaluate_run, splits_of
    from .run.evaluate import result_stem, run_summary
    from .run.record import RunDir, checkpoint_name, method_from_state
    from .training.distributed import DistContext, resolve_device

    run = RunDir(args.run_dir)
    run_dir, args.checkpoint = run.path, checkpoint_name(args.checkpoint)  # one name per file
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
        extra = run_summary(cfg, run_dir, int(state["step"]), args.checkpoint)
        if overrides:
            extra["evaluation overrides"] = " ".join(overrides)
        results = evaluate_run(
            cfg, method, splits, run_dir, device, extra, not args.quiet, overrides, args.checkpoint
        )
    report = f"{result_stem('report', overrides, args.checkpoint)}.md"
    _print_run(results, extra, run_dir, report, args.checkpoint)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.checkpoints:
        return _analyze_history(args)
    from .experiments.analyze_run import analyze_source

    out, figures = analyze_source(
        args.path, args.settings, args.labels, args.untrained, args.out, not args.quiet
    )
    print(f"geometry report: {out / 'analysis.md'}")
    for f in [out / "analysis.json", *figures]:
        print(f"  {f}")
    return 0


def _analyze_history(args: argparse.Namespace) -> int:
    from .experiments.history import analyze_history

    if not args.path or not Path(args.path).is_dir():
        raise ValueError("analyze --checkpoints takes a run directory")
    out = Path(args.out) if args.out else Path(args.path) / "analysis" / "history"
    rows = analyze_history(args.path, args.checkpoints, out)
    keys = ("percent_error", "effective_rank", "capacity", "knn_accuracy")
    print(f"{'checkpoint':>16} {'step':>7} {'epoch':>6} " + " ".join(f"{k:>15}" for k in keys))
    for r in rows:
        values = " ".join(f"{r.get(f'probe/{k}', float('nan')):15.4g}" for k in keys)
        name = "=".join([r["checkpoint"], *r["same_as"]])  # one file's names
        print(f"{name:>16} {r['step']:>7} {r['epoch']:>6} {values}")
    print(f"history: {out / 'history.json'}\nfigures: {out / 'probes.png'}")
    return 0


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
    if args.list:
        from .experiments.sweep import trial_table

        rows = trial_table(spec, out)
        print(f"{len(rows)} trials of {args.spec} in {out / 'trials'} (directory, status, grid):")
        for row in rows:
            values = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("trial", "status"))
            print(f"  {row['trial']}  {row['status']:<8} {values}")
        return 0
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

    c = args.settings
    out = export_backbone(args.run, c.format, c.out, c.overwrite, c.checkpoint)
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    print(f"{c.format} weights of {spec['backbone']}: {out}\n  {out}.json\nload them with:")
    print("  " + spec["load"].replace("\n", "\n  "))
    return 0


def _cmd_lm(args: argparse.Namespace) -> int:
    from .lm import compare

    compare(args.settings, args.seeds, args.out, progress=not args.quiet)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    from .run.launch import launch_slurm
    from .runinfo import make_run_dir

    cfg = _run_config(args)
    name = cfg.train.name or f"{cfg.method.name}-{cfg.data.name}"
    run_dir = Path(args.resume) if args.resume else make_run_dir(cfg.train.out_dir, name)
    job = launch_slurm(cfg, run_dir, args.settings)
    print(
        f"submitted job {job.job_id}: run {run_dir}\n  logs: {run_dir}.slurm/\n  figures as it "
        f"trains: manifold-ssl plot {run_dir}"
    )
    if args.settings.wait:
        print(f"job {job.job_id} ended: {', '.join(map(str, job.results()))}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .config import list_recipes

    print("\n".join(list_recipes()))
    return 0


@dataclass(frozen=True)
class Command:
    """A subcommand: the function that runs it, its help, its settings (a dataclass of
    :func:`~manifold_ssl._keys.key` fields, ``"module:Class"``, read as ``--key value`` flags and
    ``--SECTION.key=value``), and its other arguments (``(names, argparse keywords)``)."""

    run: Callable[[argparse.Namespace], int]
    help: str
    description: str = ""
    settings: str | None = None
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()


def _arg(*names: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return names, kwargs


_QUIET = _arg("--quiet", action="store_true", help="no progress output")
_LM_ABOUT = (
    "a small language model trained with CE vs CE + matrix cross-entropy (Matrix-SSL App. B) "
    "over seeds: exact match on generated arithmetic word problems, or bits per character of "
    "--text"
)
COMMANDS: dict[str, Command] = {
    "simulate": Command(
        _cmd_simulate,
        "nuclear norm of perfectly uniform centroids vs its bound (Schaeffer App. B, Fig. 2)",
        "Percent error of uniform random unit centroids over a P x D grid; writes JSON, a "
        "heatmap and Fig. 2-style line plots into a new run directory.",
        "manifold_ssl.experiments.simulate:SimulateConfig",
        (
            _arg("--out", type=Path, default=Path("runs"), help="parent of the run directory"),
            _QUIET,
        ),
    ),
    "pretrain": Command(
        _cmd_pretrain,
        "pretrain an encoder (default: MMCR on digits), then evaluate it against baselines",
        "Pretrain with a recipe (a packaged name or a YAML path; default digits_mmcr) and "
        "--section.key=value overrides; then kNN and linear-probe accuracy next to a "
        "random-init encoder and raw pixels. Under torchrun it runs DDP.",
        None,
        (
            _arg("recipe", nargs="?", help="recipe name or YAML path (default digits_mmcr)"),
            _arg("--resume", help="continue the run in this directory exactly where it stopped"),
            _arg("--no-eval", dest="no_eval", action="store_true", help="skip the evaluation"),
            _QUIET,
        ),
    ),
    "evaluate": Command(
        _cmd_evaluate,
        "evaluate a run directory's checkpoint",
        "kNN and linear probe (and baselines, fine-tuning) of a run's checkpoint. "
        "--eval.key=value overrides change only the evaluation; the run's config is not edited.",
        None,
        (
            _arg("run_dir", help="a run directory (with config.yaml and checkpoints/)"),
            _arg(
                "--checkpoint",
                default="last",
                help="checkpoint in checkpoints/: last (default), best, epoch-<N> (train.keep_*)",
            ),
            _arg("--device", type=_device, help="torch device (default: the run's train.device)"),
            _QUIET,
        ),
    ),
    "analyze": Command(
        _cmd_analyze,
        "geometry report: capacity/radius/dimension per layer, spectra, similarities, t-SNE",
        "Analyse a run directory, a checkpoint, a .npy of features ((N, F) with --labels, or "
        "(P, m, F) manifolds), or an untrained model from a recipe.",
        "manifold_ssl.experiments.analyze:AnalyzeConfig",
        (
            _arg("path", nargs="?", help="run directory, .pt checkpoint or .npy features"),
            _arg("--labels", help=".npy of class ids for (N, F) features"),
            _arg("--untrained", metavar="RECIPE", help="analyse a randomly initialised model"),
            _arg("--out", help="report folder (default: next to the input)"),
            _arg(
                "--checkpoints",
                metavar="all|LIST",
                help="of a run directory: measure the training probes' geometry (capacity, "
                "effective rank, packing, gradient coherence with its control) at each kept "
                "checkpoint (all, or e.g. epoch-0010,best) and draw it against training "
                "(train.keep_every keeps them)",
            ),
            _QUIET,
        ),
    ),
    "sweep": Command(
        _cmd_sweep,
        "run a grid of trials (packaged name or YAML spec), resumably; or 'sweep status DIR'",
        "Each trial is a run directory DIR/trials/<config hash>. Running a sweep again skips "
        "finished trials and resumes interrupted ones.",
        None,
        (
            _arg("spec", help="sweep name or YAML path, or 'status'"),
            _arg("dir", nargs="?", help="with 'status': the sweep directory"),
            _arg(
                "--grid",
                action="append",
                default=[],
                metavar="KEY=V1,V2",
                help="replace or add a grid axis (P, D, K, seed or a dotted config key); "
                "repeatable",
            ),
            _arg("--out", help="sweep directory (default sweeps/<spec name>)"),
            _arg(
                "--list",
                action="store_true",
                help="print each trial (its directory under DIR/trials, status and grid "
                "values) and exit without running any",
            ),
            _arg("--workers", type=_positive_int, default=1, help="local parallel trials"),
            _arg("--launcher", choices=["local", "slurm"], default="local"),
            _arg("--partition", help="slurm partition"),
            _arg("--time", type=_positive_int, default=60, help="slurm minutes per job"),
            _arg("--gpus", type=int, default=1, help="slurm GPUs per trial"),
            _arg("--cpus", type=_positive_int, default=8, help="slurm CPUs per trial"),
            _arg("--wait", action="store_true", help="slurm: wait for the jobs to end"),
            _QUIET,
        ),
    ),
    "plot": Command(
        _cmd_plot,
        "figures of a sweep (Fig. 3 double descent, P x D heat map, Fig. 4 scaling fits) or of "
        "a run's probes (geometry over training, CLAMP packing dynamics)",
        "Figures and their data. A sweep directory: DIR/figures/ (Schaeffer et al. Figs. 3-5 "
        "and 7; one sub-folder per value of every grid axis the figures do not draw, such as "
        "optim.lr or recipe). A run directory: DIR/figures/probes.png (and CLAMP's "
        "clamp_dynamics.png) from its probes.",
        None,
        (_arg("dir", help="a sweep or run directory"),),
    ),
    "export": Command(
        _cmd_export,
        "the pretrained backbone as a state dict that torchvision or timm loads",
        "Write the backbone of a run (or checkpoint) as a plain state dict: torchvision or timm "
        "keys (the classifier is the only missing key), or its own keys; FILE.json says how to "
        "build the model that loads it.",
        "manifold_ssl.export:ExportConfig",
        (_arg("run", help="a run directory or a checkpoint .pt"),),
    ),
    "lm": Command(
        _cmd_lm,
        _LM_ABOUT,
        _LM_ABOUT[0].upper() + _LM_ABOUT[1:] + ". Each objective × seed is a resumable run "
        "under --out; summary.md compares them (mean ± 95% t-interval over seeds).",
        "manifold_ssl.lm.train:LMConfig",
        (
            _arg("--seeds", type=_seed_list, default=[0, 1, 2], help="distinct seeds, 0,1,2"),
            _arg("--out", default="runs/lm", help="folder of the runs and summary"),
            _QUIET,
        ),
    ),
    "launch": Command(
        _cmd_launch,
        "one run on a Slurm cluster through submitit: manifold-ssl launch slurm RECIPE "
        "--nodes N --gpus-per-node G [--section.key=value ...]",
        "Submit one run as a Slurm job of one process per GPU on every node, joined as under "
        "torchrun; a preempted or timed-out job is requeued and resumes the run exactly; rank "
        "0 evaluates it at the end. The run's keys are --section.key=value as for pretrain.",
        "manifold_ssl.run.launch:LaunchConfig",
        (
            _arg("backend", choices=["slurm"], help="the scheduler (slurm)"),
            _arg("recipe", nargs="?", help="recipe name or YAML path (default digits_mmcr)"),
            _arg("--resume", help="a run directory to continue on the cluster"),
        ),
    ),
    "recipes": Command(_cmd_recipes, "list the packaged recipes"),
    "losses": Command(_cmd_losses, "list the registered objectives"),
}


def _settings_class(command: Command) -> type:
    module, _, name = (command.settings or "").partition(":")
    return getattr(importlib.import_module(module), name)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    """The default of a dataclass field (made by its factory when it has one)."""
    if isinstance(f.default_factory, dataclasses._MISSING_TYPE):
        return f.default
    return f.default_factory()


def _flag_value(cls: type, name: str) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        from ._keys import check_flag

        try:
            return check_flag(cls, name, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return read


def _add_settings(parser: argparse.ArgumentParser, section: str, cls: type) -> None:
    """``--key value`` for every key of the settings dataclass ``cls``, read and checked as
    ``--section.key=value`` is (a bare boolean flag means true); its help and default in
    ``--help``."""
    for f in dataclasses.fields(cls):
        shown = json.dumps(_default_of(f))
        kwargs: dict[str, Any] = {"nargs": "?", "const": True} if f.type in ("bool", bool) else {}
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"{section}.{f.name}",
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            type=_flag_value(cls, f.name),
            help=f"{f.metadata.get('help', '')} (default: {shown}; or --{section}.{f.name}=...)".replace(
                "%", "%%"
            ),
            **kwargs,
        )
    parser.set_defaults(settings_of=(section, cls))


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`; a command's settings become flags."""
    from .config import config_help

    parser = argparse.ArgumentParser(
        prog="manifold-ssl",
        description="Multi-view self-supervised learning on the geometry of neural manifolds.",
    )
    parser.add_argument("--version", action="version", version=f"manifold-ssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description or None)
        for names, kwargs in command.arguments:
            p.add_argument(*names, **kwargs)
        if command.settings:
            _add_settings(p, name, _settings_class(command))
        p.set_defaults(func=command.run)
    from .experiments.sweep import list_sweeps

    sub.choices[
        "sweep"
    ].description = f"{COMMANDS['sweep'].description} Packaged: {', '.join(list_sweeps())}."
    pretrain = sub.choices["pretrain"]
    pretrain.formatter_class = argparse.RawDescriptionHelpFormatter
    pretrain.epilog = "config keys (--section.key=value; the recipe's values replace these "
    pretrain.epilog += f"defaults):\n{config_help()}"
    sub.add_parser(
        "openclip",
        help="OpenCLIP's trainer (open_clip_train) with multimodal MMCR or CLIP: "
        "manifold-ssl openclip --loss multimodal_mmcr -- <open_clip_train arguments>",
        add_help=False,
    )
    return parser


def _read_settings(args: argparse.Namespace, dotted: list[str]) -> None:
    """``args.settings``: the command's settings from its flags and ``--section.key=value``."""
    from ._keys import check_flag, settings_from

    section, cls = args.settings_of
    values = {k.partition(".")[2]: v for k, v in vars(args).items() if k.startswith(f"{section}.")}
    for item in dotted:
        name, _, text = item[2:].partition("=")
        values[name.partition(".")[2]] = check_flag(cls, name.partition(".")[2], text, section)
    args.settings = settings_from(cls, values, section)


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
    argv = _joined(argv, parser)
    # --section.key=value overrides are taken out first: argparse mistakes values with spaces
    # ("--eval.semi_supervised=[0.01, 0.1]") for positionals
    overrides = [a for a in argv if re.match(r"^--[A-Za-z_]+\.[A-Za-z_.]+=", a)]
    args, unknown = parser.parse_known_args([a for a in argv if a not in overrides])
    section = getattr(args, "settings_of", ("",))[0]
    mine = [o for o in overrides if section and o.startswith(f"--{section}.")]
    if args.command == "pretrain":
        args.overrides = overrides + unknown
    elif args.command == "launch" and not unknown:  # the run's keys, beside the launch's own
        args.overrides = [o for o in overrides if o not in mine]
    elif args.command == "evaluate" and not unknown:
        args.overrides = overrides
    elif unknown or len(mine) < len(overrides):
        unknown += [o for o in overrides if o not in mine]
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if section:
            _read_settings(args, mine)
        return int(args.func(args))
    except (ValueError, OSError) as err:  # bad input, full disk: one clear line, no traceback
        print(f"manifold-ssl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a non-finite loss: the run kept its last checkpoint
        print(f"manifold-ssl {args.command}: error: {err}", file=sys.stderr)
        return 1


_DOTTED = re.compile(r"--[A-Za-z_]+\.[A-Za-z_.]+")


def _joined(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--section.key VALUE`` as ``--section.key=VALUE``, as argparse reads ``--flag VALUE``:
    a dotted key (never one of argparse's own options) takes the next argument as its value,
    so a recipe or run directory after it is never taken for one; a boolean key alone, or
    before anything but true/false, means true (``--model.sync_bn cifar10_mmcr``). A key
    with no value is refused, showing the ``=`` form."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg, after = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        i += 1
        if not _DOTTED.fullmatch(arg):
            out.append(arg)
            continue
        if _annotation(arg[2:], argv[0]) is bool:
            given = after is not None and after.lower() in ("true", "false")
            out.append(f"{arg}={after if given else 'true'}")
            i += int(given)
        elif after is None or after.startswith("--"):
            parser.error(f"{arg} needs a value: {arg}=VALUE (or {arg} VALUE)")
        else:
            out.append(f"{arg}={after}")
            i += 1
    return out


def _annotation(dotted: str, command: str) -> Any:
    """The type of the key ``dotted`` (``section.key``) as ``command`` reads it (its own
    settings, or the run's config), or None where there is no such key."""
    import typing

    section, _, name = dotted.partition(".")
    if command in COMMANDS and COMMANDS[command].settings and section == command:
        cls: Any = _settings_class(COMMANDS[command])
    else:
        from .config import Config

        cls = typing.get_type_hints(Config).get(section)
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    return typing.get_type_hints(cls).get(name)


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
