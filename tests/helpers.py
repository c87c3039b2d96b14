"""Shared test settings (imported as ``helpers``; tests/ is on sys.path via conftest)."""

from __future__ import annotations

# A model small enough for a few CPU seconds of pretraining on digits.
TINY_MODEL = [
    "--model.width=4",
    "--model.projector=32-16",
    "--views.num_views=2",
    "--train.batch_size=64",
]

# A multimodal model as small: image and text towers, few iterations of the linear probe.
TINY_MULTIMODAL = [
    "--model.width=4",
    "--model.projector=16",
    "--text.width=16",
    "--text.layers=1",
    "--text.heads=2",
    "--text.context_length=16",
    "--train.batch_size=32",
    "--train.log_every=1",
    "--train.knn_every=0",
    "--eval.linear_max_iter=20",
    "--eval.baselines=false",
]


def tiny_run_args(tmp_path, *extra: str) -> list[str]:
    """``pretrain`` arguments for a tiny run whose data and runs live under ``tmp_path``."""
    return [
        f"--data.root={tmp_path / 'data'}",
        f"--train.out_dir={tmp_path / 'runs'}",
        *TINY_MODEL,
        *extra,
    ]


def files_run_cfg(tmp_path, name: str, path, *overrides: str):
    """A tiny run on image files (``imagefolder`` or ``webdataset`` at ``path``) read at 16 px
    with the ``cifar`` views, batch 8, two epochs, every step logged; data and runs under
    ``tmp_path``."""
    from manifold_ssl.config import apply_overrides, load_recipe

    return apply_overrides(
        load_recipe("digits_mmcr"),
        [
            f"--data.name={name}",
            f"--data.path={path}",
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
            "--data.image_size=16",
            "--data.workers=0",
            "--views.preset=cifar",
            *TINY_MODEL,
            "--train.batch_size=8",
            "--train.epochs=2",
            "--train.log_every=1",
            "--train.knn_every=0",
            *overrides,
        ],
    )


def _ddp_pretrain_worker(rank: int, rendezvous: str, cfg_dict: dict, run_dir: str) -> None:
    import os

    import torch

    from manifold_ssl.config import config_from_dict
    from manifold_ssl.run import train as pretrain

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2
    )
    pretrain(config_from_dict(cfg_dict), progress=False, run_dir=run_dir)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def one_and_two_process_losses(cfg, tmp_path) -> tuple[dict[int, float], dict[int, float]]:
    """The loss curves (step -> loss) of ``cfg`` pretrained in one process and under DDP on two
    gloo processes."""
    import torch.multiprocessing as mp

    from manifold_ssl.config import config_to_dict
    from manifold_ssl.run import train as pretrain
    from manifold_ssl.training.metrics import read_metrics

    def losses(run_dir):
        records = read_metrics(run_dir / "metrics.jsonl")
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    single = pretrain(cfg, progress=False, run_dir=tmp_path / "single")
    args = (str(tmp_path / "rendezvous"), config_to_dict(cfg), str(tmp_path / "ddp"))
    mp.spawn(_ddp_pretrain_worker, args=args, nprocs=2)
    return losses(single.run_dir), losses(tmp_path / "ddp")
