"""One run on a Slurm cluster, through submitit: ``manifold-ssl launch slurm RECIPE --nodes N
--gpus-per-node G [--section.key=value ...]``.

The job runs one process per GPU (``tasks_per_node``) on each of ``nodes`` nodes. Each process
exports what ``torchrun`` would (``MASTER_ADDR`` the first node, ``MASTER_PORT`` from the job
id, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: submitit's ``TorchDistributedEnvironment``), so
the training joins one process group by ``env://`` exactly as under ``torchrun``. The run
directory is chosen at submission. Before the job's time limit, or on a preemption, Slurm
signals it and submitit's ``checkpoint`` submits the same job again; that job resumes the run
from ``checkpoints/last.pt`` exactly (the steps after that checkpoint are trained again, on the
same batches: ``train.checkpoint_every_steps`` bounds them), or starts it over when nothing was
checkpointed yet. After training, rank 0 evaluates the run as ``pretrain`` does. The submitit
logs are in ``<run directory>.slurm/``.

Why submitit: it writes the ``sbatch`` script, requeues on preemption and carries the Python
callable to the nodes; only the environment for ``env://`` and the resume rule are ours.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._keys import at_least, key, one_of, optional, positive
from ..config import Config, config_from_dict, config_to_dict

__all__ = ["LaunchConfig", "RunJob", "launch_slurm", "slurm_executor"]


@dataclass
class LaunchConfig:
    """The settings of ``manifold-ssl launch slurm`` (``--nodes 2`` or ``--launch.nodes=2``)."""

    nodes: int = key(1, "Slurm nodes", positive)
    gpus_per_node: int = key(1, "GPUs per node; one process each", at_least(0))
    tasks_per_node: int | None = key(
        None, "processes per node (null: gpus_per_node, at least 1)", optional(positive)
    )
    cpus_per_task: int = key(8, "CPUs per process (its DataLoader workers)", positive)
    time: int = key(60 * 24, "minutes per job before it is requeued", positive)
    partition: str | None = key(None, "Slurm partition")
    account: str | None = key(None, "Slurm account")
    mem_gb: int | None = key(None, "memory per node in GB (null: the partition's default)")
    evaluate: bool = key(True, "rank 0 evaluates the run after training, as pretrain does")
    wait: bool = key(False, "wait for the job to end and print its result")
    cluster: str | None = key(
        None,
        "null: Slurm; local: this machine, the job's processes as subprocesses (a dry run "
        "of the same job); debug: in this process",
        optional(one_of("local", "debug")),
    )


def slurm_executor(folder: Path, s: LaunchConfig, name: str) -> Any:
    """A submitit executor for ``s`` writing its logs into ``folder``."""
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "launch slurm needs submitit: pip install 'manifold-ssl[slurm]'"
        ) from None
    if s.cluster is None and shutil.which("sbatch") is None:
        raise ValueError(
            "launch slurm needs Slurm (sbatch is not on PATH here); --launch.cluster=local runs "
            "the same job on this machine"
        )
    executor = submitit.AutoExecutor(folder=folder, cluster=s.cluster)
    params: dict[str, Any] = {
        "nodes": s.nodes,
        "tasks_per_node": s.tasks_per_node or max(1, s.gpus_per_node),
        "gpus_per_node": s.gpus_per_node,
        "cpus_per_task": s.cpus_per_task,
        "timeout_min": s.time,
        "name": name,
    }
    if s.cluster is None:
        params |= {"slurm_signal_delay_s": 120}
        params |= {"slurm_partition": s.partition} if s.partition else {}
        params |= {"slurm_account": s.account} if s.account else {}
        params |= {"mem_gb": s.mem_gb} if s.mem_gb else {}
    executor.update_parameters(**params)
    return executor


class RunJob:
    """The job every process of the launch runs: join the group, train (new, or resumed from
    the run's last checkpoint), and on rank 0 evaluate; submitit's ``checkpoint`` requeues the
    same job."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str, evaluate: bool) -> None:
        self.args = (cfg_dict, run_dir, evaluate)

    def __call__(self) -> str:
        from .pipeline import run

        _join()
        cfg_dict, run_dir, evaluate = self.args
        cfg = config_from_dict(cfg_dict)
        return run(cfg, run_dir, resume="auto", evaluate=evaluate, progress=False).result.status

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(*self.args))


def _join() -> int:
    """Export torchrun's environment for this process of the job (``env://``); its rank (0
    when called outside a submitit job: one process)."""
    import submitit

    try:
        env = submitit.helpers.TorchDistributedEnvironment()
    except RuntimeError:  # not in a job (called directly): one process
        return 0
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False, overwrite=True)
    return int(env.rank)


def launch_slurm(cfg: Config, run_dir: str | Path, settings: LaunchConfig | None = None) -> Any:
    """Submit the run of ``cfg`` into ``run_dir`` (new, or resumed where it holds a checkpoint)
    as one Slurm job of ``settings`` (see :class:`LaunchConfig`); returns the submitit job."""
    s = settings or LaunchConfig()
    path = Path(run_dir)
    executor = slurm_executor(path.with_name(path.name + ".slurm"), s, f"manifold-ssl-{path.name}")
    return executor.submit(RunJob(config_to_dict(cfg), str(path), s.evaluate))
