"""Two CPU processes (gloo) against one process on the global batch.

Each case wraps a small float64 projector in DDP, feeds each rank its slice of the global
batch, and checks that every rank's loss equals the single-process loss of the global batch
and that the parameter gradients after DDP's averaging equal the single-process gradients.
One case also checks the documented convention on the embeddings themselves: the gradient
reaching a rank's local embeddings is world_size × the single-process gradient.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from manifold_ssl.losses import LOSSES, build_loss

WORLD = 2
D_IN = 6
# name, loss kwargs, projector width, global batch, rank-0 share of it
CASES = [
    ("mmcr", {}, 4, 12, 6),  # D <= global B: the D×D Gram is summed over ranks
    ("mmcr", {}, 16, 12, 6),  # D > global B: the centroids are gathered
    ("mmcr", {"lambd": 0.5}, 5, 11, 4),  # local nuclear-norm term, unequal shards
    ("mmcr", {"nuclear": "polar", "polar_steps": 60}, 4, 12, 6),  # gathered centroids
    ("mmcr", {"nuclear": "polar", "polar_steps": 60, "lambd": 0.5}, 5, 11, 4),
    ("multimodal_mmcr", {}, 5, 10, 5),
    ("multimodal_mmcr", {"nuclear": "polar", "polar_steps": 60}, 5, 10, 5),
    ("clamp", {"r_s": 7.0}, 5, 12, 6),  # the official form: capped reach, margin
    ("clamp", {"r_s": 2.0, "form": "paper"}, 5, 12, 6),
    ("matrix_ssl", {}, 5, 12, 6),  # the official form: covariances / B
    ("matrix_ssl", {"order": None, "lambd": 0.1}, 5, 12, 6),
    ("matrix_ssl", {"form": "paper", "order": None, "lambd": 0.1}, 5, 11, 4),
    ("simclr", {"temperature": 0.3}, 5, 11, 7),  # unequal shards, K = 3 views
    ("barlow_twins", {}, 5, 12, 6),
    ("vicreg", {}, 5, 12, 6),
    ("byol", {}, 5, 12, 6),
    ("simsiam", {}, 5, 12, 6),
    ("tcr", {}, 5, 12, 6),
    ("mec", {}, 5, 12, 6),
    ("clip", {}, 5, 12, 6),
    ("alignment", {}, 5, 12, 6),
    ("uniformity", {}, 5, 12, 6),
]


def case_data(index: int) -> tuple[torch.Tensor, torch.nn.Module]:
    name, _, width, batch, _ = CASES[index]
    gen = torch.Generator().manual_seed(100 + index)
    views = 3 if LOSSES[name].inputs == "views" else 2
    x = torch.randn(batch, views, D_IN, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(D_IN, width, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return x, model


def run_loss(index: int, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    name, kwargs, *_ = CASES[index]
    loss_fn = build_loss(name, **kwargs)
    z = model(x)  # (B, K, D)
    if LOSSES[name].inputs == "views":
        return loss_fn(z)
    return loss_fn(z[:, 0], z[:, 1])


def shard(index: int, x: torch.Tensor, rank: int) -> torch.Tensor:
    first = CASES[index][4]
    return x[:first] if rank == 0 else x[first:]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    for index in range(len(CASES)):
        x, model = case_data(index)
        ddp = DDP(model)
        loss = run_loss(index, ddp, shard(index, x, rank))
        loss.backward()
        results[index] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    # the embedding-level convention, on MMCR
    z_global = torch.randn(
        10, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    z_local = z_global[rank * 5 : (rank + 1) * 5].clone().requires_grad_(True)
    build_loss("mmcr")(z_local).backward()
    results["embedding_grad"] = z_local.grad
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        yield [
            torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)
        ]


@pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_two_processes_equal_one_process_on_the_global_batch(index, rank_results):
    x, model = case_data(index)
    loss = run_loss(index, model, x)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    for rank in range(WORLD):
        rank_loss, rank_grads = rank_results[rank][index]
        torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-10, atol=1e-12)
        for g_rank, g in zip(rank_grads, grads, strict=True):
            torch.testing.assert_close(g_rank, g, rtol=1e-8, atol=1e-10)


def test_embedding_gradient_is_world_size_times_single_process(rank_results):
    z = torch.randn(10, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    z.requires_grad_(True)
    build_loss("mmcr")(z).backward()
    for rank in range(WORLD):
        expected = WORLD * z.grad[rank * 5 : (rank + 1) * 5]
        torch.testing.assert_close(rank_results[rank]["embedding_grad"], expected)


def test_every_batch_loss_has_a_distributed_case():
    covered = {c[0] for c in CASES}
    assert {n for n, cls in LOSSES.items() if cls.inputs != "lm"} <= covered
