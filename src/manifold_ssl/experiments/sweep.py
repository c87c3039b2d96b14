"""Sweeps: a grid of config values, one ordinary run directory per trial, resumable.

A sweep spec (YAML, or the name of a packaged one in ``configs/sweeps/``)::

    recipe: digits_mmcr            # the base recipe
    overrides: {train.max_steps: 300, train.epochs: 100000}
    grid: {P: [16, 32, 64], D: [16, 32, 64], K: [2, 4]}
    seeds: [0]
    evaluate: false                # kNN + linear probe after each trial

Grid keys are dotted config keys or the aliases of Schaeffer et al.: ``P`` the global batch
(``train.batch_size``), ``K`` the views per image (``views.num_views``) and ``D`` the embedding
dimension (the last width of ``model.projector``, the hidden widths kept). The grid key
``recipe`` compares recipes, each with its own settings (multimodal MMCR at lr 1e-4 against
CLIP at 1e-3): a trial's config is its recipe, then ``overrides``, then its grid values.

Each trial's directory is ``DIR/trials/<hash>``, the hash of its resolved config (the output
paths and the thread count excluded), so the same point of the same sweep always lands in the
same place. Running a sweep again skips trials that finished (``done.json``), resumes those with
a checkpoint exactly where they stopped, and starts the rest. Launchers: a local process pool
(``workers`` processes sharing the cores) or Slurm through submitit (``pip install
manifold-ssl[slurm]``), whose requeued jobs resume the same way.

Written here rather than with a sweep framework (Hydra's multirun, W&B sweeps): the trials must
be this package's run directories with its exact resume, and the summary must know P, D, K and
the FLOPs of the training loop.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._atomic import atomic_file
from .._keys import parse_text
from ..config import (
    Config,
    config_from_dict,
    config_to_dict,
    load_recipe,
    read_packaged_yaml,
    read_run_config,
)
from ..models.heads import embedding_dim
from ..runinfo import RunInUse, read_metrics, run_metadata, write_json
from .columns import COLUMNS

__all__ = [
    "SWEEP_DIR",
    "SweepFailed",
    "SweepSpec",
    "Trial",
    "expand",
    "load_spec",
    "run_sweep",
    "summarise",
    "sweep_status",
    "trial_table",
]

SWEEP_DIR = Path(__file__).resolve().parent.parent / "configs" / "sweeps"
ALIASES = {"P": "train.batch_size", "K": "views.num_views"}
TrialArgs = tuple[dict[str, Any], str, bool]  # run_trial's (config dict, directory, evaluate)
#: Keys that say where and how fast a trial runs, not what it computes: not in its hash.
UNHASHED = (
    ("data", "root"),
    ("train", "out_dir"),
    ("train", "name"),
    ("train", "num_threads"),
    ("train", "wandb"),
    ("train", "wandb_project"),
    ("train", "wandb_group"),
)


@dataclass
class SweepSpec:
    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    evaluate: bool = False


@dataclass
class Trial:
    point: dict[str, Any]  # the grid values (and seed) of this trial, by grid key
    cfg: Config
    key: str  # the hash naming its directory


def list_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def load_spec(name_or_path: str, grid_args: Sequence[str] = ()) -> SweepSpec:
    """A spec from a YAML path or a packaged name; ``grid_args`` (``KEY=V1,V2``) replace or add
    grid axes (``seed=0,1,2`` sets the seeds)."""
    path, raw = read_packaged_yaml(name_or_path, SWEEP_DIR, "sweep", list_sweeps())
    unknown = set(raw) - {"recipe", "overrides", "grid", "seeds", "evaluate"}
    if unknown or ("recipe" not in raw and "recipe" not in (raw.get("grid") or {})):
        raise ValueError(
            f"sweep spec {path}: needs 'recipe' (or a grid axis 'recipe') and may have "
            f"overrides, grid, seeds, evaluate; got unknown keys {sorted(unknown)}"
        )
    spec = SweepSpec(
        str(raw.get("recipe") or raw["grid"]["recipe"][0]),
        dict(raw.get("overrides") or {}),
        {k: list(v) for k, v in (raw.get("grid") or {}).items()},
        list(raw.get("seeds", [0])),
        bool(raw.get("evaluate", False)),
    )
    for item in grid_args:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {item!r} must look like KEY=V1,V2,...")
        parsed = [parse_text(v) for v in values.split(",")]  # YAML 1.2: off stays text
        if key == "seed":
            spec.seeds = [int(v) for v in parsed]
        else:
            spec.grid[key] = parsed
    for axis, axis_values in spec.grid.items():
        if not isinstance(axis_values, list) or not axis_values:
            raise ValueError(f"grid axis {axis!r} must be a non-empty list, got {axis_values!r}")
    return spec


def _nested(values: dict[str, Any], base: Config) -> dict[str, Any]:
    """Dotted keys (and the aliases P, K, D) as the nested dict ``config_from_dict`` takes."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if key == "D":
            hidden = [w for w in base.model.projector.split("-") if w][:-1]
            key, value = "model.projector", "-".join([*hidden, str(int(value))])
        key = ALIASES.get(key, key)
        section, dot, name = key.partition(".")
        if not dot:
            raise ValueError(f"sweep key {key!r} must be P, D, K or a dotted config key")
        nested.setdefault(section, {})[name] = value
    return nested


def trial_key(cfg: Config) -> str:
    d = config_to_dict(cfg)
    for section, name in UNHASHED:
        d[section].pop(name, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the spec, in grid order (the last axis fastest, seeds innermost)."""
    bases: dict[str, Config] = {}

    def base_of(name: str) -> Config:
        if name not in bases:
            recipe = load_recipe(name)
            bases[name] = config_from_dict(_nested(spec.overrides, recipe), recipe)
        return bases[name]

    axes = list(spec.grid)
    trials = []
    for values in itertools.product(*(spec.grid[a] for a in axes)):
        point = dict(zip(axes, values, strict=True))
        base = base_of(str(point.get("recipe", spec.recipe)))
        values_of = {k: v for k, v in point.items() if k != "recipe"}
        for seed in spec.seeds:
            cfg = config_from_dict(_nested({**values_of, "train.seed": seed}, base), base)
            trials.append(Trial({**point, "seed": seed}, cfg, trial_key(cfg)))
    return trials


def trial_table(spec: SweepSpec, out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every trial of ``spec`` without running any: its directory name under
    ``out/trials``, its status there (pending where never run) and its grid values."""
    return [
        {"trial": t.key, "status": _status(Path(out) / "trials" / t.key), **t.point}
        for t in expand(spec)
    ]


def _status(trial_dir: Path) -> str:
    if (trial_dir / "done.json").exists():
        return "done"
    if _error_file(trial_dir).exists():
        return "failed"
    if (trial_dir / "checkpoints" / "last.pt").exists():
        return "partial"
    return "pending"


def _error_file(trial_dir: Path) -> Path:
    """Where a local trial's failure is recorded (beside its directory, which a run that fails
    before its first checkpoint removes); running the sweep again retries the trial."""
    return trial_dir.with_suffix(".error")


def run_trial(cfg_dict: dict[str, Any], trial_dir: str, evaluate: bool, threads: int) -> str:
    """Run (or resume) one trial in this process (:func:`manifold_ssl.run.pipeline.run`);
    returns its status. Used by every launcher."""
    import torch

    from ..run.pipeline import EVALUATED, run

    if threads > 0:
        torch.set_num_threads(threads)
    cfg, path = config_from_dict(cfg_dict), Path(trial_dir)
    if cfg.train.wandb != "off" and not cfg.train.wandb_group:
        cfg.train.wandb_group = path.parent.parent.name  # <sweep>/trials/<trial>: the sweep
    if _status(path) == "done":
        return "done"
    result = run(cfg, path, resume="auto", evaluate=evaluate, progress=False).result
    if result.status not in EVALUATED:  # budget: a speedrun's end
        return "partial"
    write_json(path / "done.json", {"status": result.status, "step": result.step})
    return "done"


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike[str],
    workers: int = 1,
    launcher: str = "local",
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every unfinished trial of ``spec`` under ``out``; write and return the summary."""
    out = Path(out)
    trials = expand(spec)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"spec": spec.__dict__, "meta": run_metadata()})
    remaining: list[Trial] = []
    for t in trials:
        if _status(out / "trials" / t.key) != "done":
            remaining.append(t)
        if not (out / "trials" / f"{t.key}.json").exists():
            write_json(out / "trials" / f"{t.key}.json", {"point": t.point})
    remaining, paired = _first_pair_first(remaining)
    todo: list[TrialArgs] = [
        (config_to_dict(t.cfg), str(out / "trials" / t.key), spec.evaluate) for t in remaining
    ]
    if progress:
        print(
            f"sweep {out}: {len(trials)} trials, {len(trials) - len(todo)} done, {len(todo)} to run"
        )
        keys = {t.key for t in trials}
        stale = [p for p in (out / "trials").glob("*.json") if p.stem not in keys]
        if stale:
            print(
                f"{len(stale)} trial(s) in {out / 'trials'} belong to an earlier spec: kept, and "
                "left out of this sweep's summary and figures"
            )
    if launcher == "slurm":
        _submit_slurm(todo, out, slurm or {})
    elif launcher == "local":
        shared, ran = _run_local(todo, workers, progress, paired)
        if shared is not None:
            summarise(out)
            raise SweepFailed(
                f"sweep stopped: its first two trials, which differ in every grid value, "
                f"failed before training with the same error, so every trial would: "
                f"{shared.strip()} ({ran} trial(s) run, {len(todo) - ran} not started; the "
                "same command runs the sweep again)"
            )
    else:
        raise ValueError(f"launcher must be 'local' or 'slurm', got {launcher!r}")
    return summarise(out)


class SweepFailed(ValueError):
    """Every trial of a sweep would fail the same way (see :class:`_FailFast`)."""


def _first_pair_first(trials: list[Trial]) -> tuple[list[Trial], bool]:
    """``trials`` with the first followed by the last one that differs from it in every grid
    value that varies among them (seed included), the pair :class:`_FailFast` watches, and
    whether there is one (three trials at least: with two, both run anyway)."""
    if len(trials) < 3:
        return trials, False
    first = trials[0].point
    varying = [k for k in first if any(t.point[k] != first[k] for t in trials)]
    for j in range(len(trials) - 1, 0, -1):
        if all(trials[j].point[k] != first[k] for k in varying):
            return [trials[0], trials[j], *trials[1:j], *trials[j + 1 :]], True
    return trials, False


class _FailFast:
    """The rule that stops a sweep whose every trial would fail alike: its first two trials
    differ in every grid value (:func:`_first_pair_first`); when both fail before their first
    checkpoint with the same error, that error depends on none of the grid's values (the data
    is missing, the recipe is wrong) and no other trial is started."""

    def __init__(self, todo: list[TrialArgs], paired: bool) -> None:
        self.pair = {todo[0][1], todo[1][1]} if paired else set()
        self.errors: dict[str, str] = {}

    def shared_error(self, trial_dir: str, status: str) -> str | None:
        """After the trial in ``trial_dir`` ended with ``status``: the pair's shared error,
        once both failed at start with it; else None."""
        error = _error_file(Path(trial_dir))
        at_start = not (Path(trial_dir) / "checkpoints").exists()
        if trial_dir in self.pair and status == "failed" and at_start and error.exists():
            self.errors[trial_dir] = error.read_text()
        texts = set(self.errors.values())
        return texts.pop() if len(self.errors) == 2 and len(texts) == 1 else None


class _Progress:
    """The sweep's bar: it counts the trials done; those that failed, were interrupted (they
    checkpointed, and resume) or are run by another process are counted beside it."""

    def __init__(self, total: int, show: bool) -> None:
        self.bar = tqdm(total=total, desc="trials done", unit="trial", disable=not show)
        self.counts = {"failed": 0, "interrupted": 0, "busy": 0}

    def ended(self, status: str) -> None:
        if status == "done":
            self.bar.update(1)
            return
        self.counts["interrupted" if status == "partial" else status] += 1
        self.bar.set_postfix({k: v for k, v in self.counts.items() if v})


def _attempt(cfg_dict: dict[str, Any], trial_dir: str, evaluate: bool, threads: int) -> str:
    """:func:`run_trial`, with a failure (a non-finite loss, a batch larger than the data …)
    recorded in the trial's ``.error`` file instead of ending the sweep; a trial another
    process is running (a second launch of the sweep) is ``busy``, not failed."""
    error = _error_file(Path(trial_dir))
    try:
        status = run_trial(cfg_dict, trial_dir, evaluate, threads)
    except RunInUse:
        return "busy"
    except Exception as err:
        error.write_text(f"{type(err).__name__}: {err}\n")
        return "failed"
    error.unlink(missing_ok=True)
    return status


#: A trial process's exit code → its status (anything else, a signal or a crash: "partial").
_EXIT = {0: "done", 3: "partial", 4: "failed", 5: "busy"}


def _trial_process(args: TrialArgs, threads: int, parent: int) -> None:
    """One trial in a process of the local pool. It dies with the pool: SIGTERM when the
    parent goes (Linux ``PR_SET_PDEATHSIG``; elsewhere the parent's own handler sends it), and
    SIGINT/SIGTERM checkpoint the trial (the loop's handler) or end it quietly outside the
    loop, so a Ctrl-C leaves partial trials that the next run resumes, and no traceback."""
    import signal
    import sys

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    _die_with_parent()
    if os.getppid() != parent:  # the parent went before the line above took effect
        sys.exit(3)
    try:
        status = _attempt(*args, threads)
    except KeyboardInterrupt:
        status = "partial"
    sys.exit({v: k for k, v in _EXIT.items()}[status if status in _EXIT.values() else "partial"])


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):  # not Linux: the parent's handler stops the pool
        pass


def _run_local(
    todo: list[TrialArgs], workers: int, progress: bool, paired: bool = False
) -> tuple[str | None, int]:
    """Run ``todo`` here (``workers`` processes at a time). Returns the error every trial
    shares when :class:`_FailFast` stopped the sweep (``paired``: its first two trials differ
    in every grid value), else None, and how many trials ran."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar, watch = _Progress(len(todo), progress), _FailFast(todo, paired)
    statuses: list[str] = []
    shared = None
    if workers == 1:  # in this process: Ctrl-C reaches the trial's loop, which checkpoints
        for args in todo:
            statuses.append(_attempt(*args, threads))
            bar.ended(statuses[-1])
            if statuses[-1] == "partial":  # interrupted: the sweep stops with it
                bar.bar.close()
                _report(statuses)
                raise KeyboardInterrupt
            shared = watch.shared_error(args[1], statuses[-1])
            if shared is not None:
                break
    else:
        statuses, shared = _run_pool(todo, workers, threads, bar, watch)
    bar.bar.close()
    _report(statuses)
    return shared, len(statuses)


def _run_pool(
    todo: list[TrialArgs], workers: int, threads: int, bar: _Progress, watch: _FailFast
) -> tuple[list[str], str | None]:
    """The trials in ``workers`` processes at a time. SIGINT or SIGTERM of this process stops
    starting trials and passes SIGTERM to the running ones, which checkpoint; it returns when
    they have, then raises KeyboardInterrupt. (A ``ProcessPoolExecutor`` hung on Ctrl-C, and its
    workers outlived a killed parent.) When ``watch`` finds the error every trial shares, no
    trial is started after it, the running ones end, and it is returned with the statuses."""
    import signal
    from multiprocessing.connection import wait

    ctx = get_context("spawn")
    pending, statuses = list(todo), []
    running: dict[Any, Any] = {}
    trial_of: dict[Any, str] = {}  # sentinel -> trial directory
    shared = None
    stop: list[int] = []
    stopping = False
    old = {sig: signal.signal(sig, lambda n, f: stop.append(n)) for sig in _STOP_SIGNALS}
    try:
        while pending or running:
            while pending and len(running) < workers and not stop:
                args = pending.pop(0)
                proc = ctx.Process(target=_trial_process, args=(args, threads, os.getpid()))
                proc.start()
                running[proc.sentinel] = proc
                trial_of[proc.sentinel] = args[1]
            if stop and not stopping:  # once: no new trial, SIGTERM to the running ones
                stopping = True
                pending.clear()
                for proc in running.values():
                    if proc.is_alive() and proc.pid is not None:
                        os.kill(proc.pid, signal.SIGTERM)
            for sentinel in wait(list(running), timeout=0.5):
                proc = running.pop(sentinel)
                proc.join()
                statuses.append(_EXIT.get(proc.exitcode or 0, "partial"))
                bar.ended(statuses[-1])
                if shared is None:
                    shared = watch.shared_error(trial_of[sentinel], statuses[-1])
                    if shared is not None:
                        pending.clear()
    finally:
        for proc in running.values():  # an error here: leave no trial behind
            proc.terminate()
            proc.join()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if stop:
        bar.bar.close()
        _report(statuses)
        raise KeyboardInterrupt
    return statuses, shared


_STOP_SIGNALS = (2, 15)  # SIGINT, SIGTERM


def _report(statuses: list[str]) -> None:
    if "failed" in statuses:
        print(
            f"{statuses.count('failed')} trial(s) failed; their errors are in trials/*.error "
            "(running the sweep again retries them)"
        )
    if "busy" in statuses:
        print(
            f"{statuses.count('busy')} trial(s) are being run by another process (an earlier "
            "launch of this sweep): skipped"
        )


def slurm_executor(folder: Path, slurm: dict[str, Any]) -> Any:
    """A submitit executor for the trials: ``slurm`` holds ``partition``, ``time`` (minutes),
    ``gpus`` per trial, ``cpus`` per trial and ``cluster`` (``local``/``debug`` for testing)."""
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "the Slurm launcher needs submitit: pip install 'manifold-ssl[slurm]'"
        ) from None
    if slurm.get("cluster") is None and shutil.which("sbatch") is None:
        # submitit's AutoExecutor would fall back to running every trial here at once
        raise ValueError(
            "--launcher slurm needs Slurm (sbatch is not on PATH here); on this machine use "
            "--launcher local --workers N"
        )
    executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=slurm.get("cluster"))
    params = {
        "timeout_min": int(slurm.get("time", 60)),
        "gpus_per_node": int(slurm.get("gpus", 1)),
        "cpus_per_task": int(slurm.get("cpus", 8)),
        "tasks_per_node": 1,
        "nodes": 1,
        "name": "manifold-ssl-sweep",
    }
    if slurm.get("partition"):
        params["slurm_partition"] = slurm["partition"]
    executor.update_parameters(**params)
    return executor


class _Requeueable:
    """A trial as a submitit checkpointable callable: on preemption or timeout submitit calls
    ``checkpoint``, which requeues the same trial; the loop has checkpointed on SIGTERM (or its
    last ``checkpoint_every_steps``), so the requeued job resumes exactly."""

    def __init__(self, cfg_dict: dict[str, Any], trial_dir: str, evaluate: bool) -> None:
        self.args: TrialArgs = (cfg_dict, trial_dir, evaluate)

    def __call__(self) -> str:
        return run_trial(*self.args, 0)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(_Requeueable(*self.args))


def _submit_slurm(todo: list[TrialArgs], out: Path, slurm: dict[str, Any]) -> list[Any]:
    executor = slurm_executor(out, slurm)
    jobs = [executor.submit(_Requeueable(*args)) for args in todo]
    write_json(out / "jobs.json", {"job_ids": [j.job_id for j in jobs]})
    if slurm.get("wait"):
        for job in jobs:
            job.result()
    return jobs


def summarise(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``summary.csv`` and ``summary.json``: a row per trial with its grid point, method, P,
    D, K, steps, FLOPs and every column of :data:`~manifold_ssl.experiments.columns.COLUMNS`
    (the training metrics averaged over the last 10% of logged steps, the test accuracies where
    evaluated, else null). Only the trials of the spec last run into ``out``
    (its ``sweep.json``) are summarised: trials of an earlier spec in the same directory stay
    on disk but never mix into this sweep's rows."""
    out = Path(out)
    rows = []
    current = _current_keys(out)
    for point_file in sorted((out / "trials").glob("*.json")):
        if current is not None and point_file.stem not in current:
            continue  # a trial of an earlier spec run into the same directory
        trial_dir = point_file.with_suffix("")
        config_file = trial_dir / "config.yaml"
        point = json.loads(point_file.read_text())["point"]
        if not config_file.exists():
            if _status(trial_dir) == "failed":
                error = _error_file(trial_dir).read_text().strip()
                rows.append({"trial": trial_dir.name, "status": "failed", **point, "error": error})
            continue
        cfg = read_run_config(trial_dir)
        records = [r for r in read_metrics(trial_dir / "metrics.jsonl") if "loss" in r]
        row: dict[str, Any] = {
            "trial": trial_dir.name,
            "status": _status(trial_dir),
            **point,
            "method": cfg.method.name,
            "P": cfg.train.batch_size,
            "D": embedding_dim(cfg.model.projector, 0) or None,
            "K": cfg.views.num_views,
            "steps": records[-1]["step"] if records else 0,
            "flops": records[-1].get("flops") if records else None,
        }
        evaluated = trial_dir / "eval.json"
        results = json.loads(evaluated.read_text())["results"] if evaluated.exists() else None
        row.update({name: column.read(records, results) for name, column in COLUMNS.items()})
        rows.append(row)
    write_json(out / "summary.json", rows)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_file(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _current_keys(out: Path) -> set[str] | None:
    """The trial keys of the spec last run into ``out`` (``sweep.json``); None without one."""
    if not (out / "sweep.json").exists():
        return None
    spec = SweepSpec(**json.loads((out / "sweep.json").read_text())["spec"])
    return {t.key for t in expand(spec)}


def sweep_status(out: str | os.PathLike[str]) -> dict[str, int]:
    """How many trials of the sweep in ``out`` are done, partial (checkpointed), failed or
    pending."""
    out = Path(out)
    if not (out / "sweep.json").exists():
        raise ValueError(f"{out} is not a sweep directory (no sweep.json)")
    counts = {"done": 0, "partial": 0, "failed": 0, "pending": 0}
    current = _current_keys(out)
    for point_file in (out / "trials").glob("*.json"):
        if current is None or point_file.stem in current:
            counts[_status(point_file.with_suffix(""))] += 1
    return counts
