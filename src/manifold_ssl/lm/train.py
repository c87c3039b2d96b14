"""Cross-entropy vs cross-entropy + matrix cross-entropy for a language model (Matrix-SSL
App. B, Eq. 23), one run at a time, resumable, and the comparison over seeds.

A run trains :class:`~manifold_ssl.lm.model.GPT` on random windows of the training text with
AdamW (linear warm-up, cosine decay) under ``ce`` or ``ce+mce``
(:func:`manifold_ssl.losses.mce_lm_loss` on the tied LM-head embeddings), then reports bits per
character on held-out text and, on the arithmetic task, the exact match of greedily decoded
answers to held-out problems. Its directory holds ``config.json``, ``metrics.jsonl``,
``checkpoints/last.pt`` (atomic, every ``checkpoint_every`` steps: model, optimiser, the window
sampler's generator, the step; a rerun resumes it exactly) and ``results.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._keys import above, at_least, check_settings, key, one_of, optional, positive
from ..losses.mce_lm import mce_lm_loss
from ..runinfo import atomic_write_text, run_metadata, write_json
from ..schedules import warmup_cosine
from ..training.checkpoint import load_checkpoint, save_checkpoint
from .model import GPT
from .tasks import CharVocab, arithmetic_problems, text_splits

__all__ = ["LMConfig", "compare", "train_lm"]

OBJECTIVES = ("ce", "ce+mce")
TASKS = ("arithmetic", "text")


@dataclass
class LMConfig:
    """The settings of one language-model run (``manifold-ssl lm``: ``--steps 400`` or
    ``--lm.steps=400``)."""

    task: str | None = key(
        None, "arithmetic or text (null: text when --text is given)", optional(one_of(*TASKS))
    )
    text: str | None = key(None, "a UTF-8 text file, or .gz (default: arithmetic problems)")
    objective: str = key("ce", "ce or ce+mce (lm compares both)", one_of(*OBJECTIVES))
    seed: int = key(0, "seed of the initialisation and the windows (lm: --seeds)")
    steps: int = key(400, "optimiser steps per run", positive)
    batch: int = key(16, "windows per step", positive)
    context: int = key(128, "characters per window", positive)
    width: int = key(32, "model width", positive)
    layers: int = key(2, "transformer blocks", positive)
    heads: int = key(4, "attention heads", positive)
    lr: float = key(3e-3, "peak learning rate of AdamW", above(0))
    weight_decay: float = key(0.1, "AdamW weight decay", at_least(0))
    warmup: int = key(20, "linear warm-up steps before the cosine decay", at_least(0))
    mce_order: int | None = key(
        4,
        "Taylor order of log Q (0 or null: the exact eigen-log, ~6x slower on a CPU)",
        optional(at_least(0)),
    )
    mce_eps: float = key(
        1e-4, "ridge eps·I of the MCE's Q (0: the paper's unregularised form)", at_least(0)
    )
    mce_weight: float = key(1.0, "CE + weight · MCE (Eq. 23: 1)", at_least(0))
    train_problems: int = key(3000, "arithmetic problems to train on", positive)
    test_problems: int = key(200, "held-out arithmetic problems", positive)
    checkpoint_every: int = key(100, "steps between checkpoints", positive)
    log_every: int = key(10, "steps between metrics lines", positive)

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = "text" if self.text else "arithmetic"
        if self.mce_order == 0:
            self.mce_order = None
        check_settings(self)
        if self.task == "text" and not self.text:
            raise ValueError("task 'text' needs --text PATH")


def _data(cfg: LMConfig) -> dict[str, Any]:
    """Vocabulary, training and held-out ids, and the held-out problems (arithmetic only)."""
    test: list[Any] = []
    if cfg.task == "arithmetic":
        problems = arithmetic_problems(cfg.train_problems + cfg.test_problems, seed=12345)
        test = problems[cfg.train_problems :]
        train_text = "".join(p.text for p in problems[: cfg.train_problems])
        held_text = "".join(p.text for p in test)
        vocab = CharVocab(train_text + held_text)
    else:
        train_text, held_text = text_splits(cfg.text)  # type: ignore[arg-type]
        vocab = CharVocab(train_text)
    return {
        "vocab": vocab,
        "train": vocab.encode(train_text),
        "held": vocab.encode(held_text),
        "test": test,
    }


def _loss(
    cfg: LMConfig, model: GPT, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(x).flatten(0, 1)
    if cfg.objective == "ce":
        ce = F.cross_entropy(logits, y.flatten())
        return ce, {"ce": float(ce.detach())}
    loss, terms = mce_lm_loss(
        logits,
        y.flatten(),
        model.head_embeddings,
        order=cfg.mce_order,
        eps=cfg.mce_eps,
        weight=cfg.mce_weight,
        return_terms=True,
    )
    return loss, {"ce": float(terms["cross_entropy"]), "mce": float(terms["mce"])}


def _lr(cfg: LMConfig, step: int) -> float:
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup)


@torch.no_grad()
def bits_per_character(model: GPT, ids: torch.Tensor, batch: int = 64) -> float:
    """Mean next-character cross-entropy (bits) over consecutive windows of ``ids`` (full
    windows ``batch`` at a time, then the remainder)."""
    c = model.context
    n = (len(ids) - 1) // c
    x, y = ids[: n * c].view(n, c), ids[1 : n * c + 1].view(n, c)
    total = sum(
        float(
            F.cross_entropy(
                model(x[i : i + batch]).flatten(0, 1), y[i : i + batch].flatten(), reduction="sum"
            )
        )
        for i in range(0, n, batch)
    )
    tail_x, tail_y = ids[n * c : -1], ids[n * c + 1 :]
    if len(tail_y):
        total += float(F.cross_entropy(model(tail_x[None])[0], tail_y, reduction="sum"))
    return total / max(len(ids) - 1, 1) / math.log(2)


@torch.no_grad()
def exact_match(model: GPT, vocab: CharVocab, problems: list[Any]) -> float:
    stop = vocab.index["\n"]
    hits = 0
    for p in problems:
        out = vocab.decode(model.greedy(vocab.encode(p.question).tolist(), stop, max_new=4))
        hits += out == p.answer
    return hits / max(len(problems), 1)


def train_lm(cfg: LMConfig, out: str | Path, progress: bool = False) -> dict[str, Any]:
    """Train (or resume, or return the finished results of) the run in ``out``."""
    out = Path(out)
    config = asdict(cfg)
    if (out / "config.json").exists() and json.loads((out / "config.json").read_text()) != config:
        raise ValueError(f"{out} holds a run with another config; choose another directory")
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    data = _data(cfg)  # bad data fails here, before the run directory exists
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = GPT(len(data["vocab"]), cfg.context, cfg.width, cfg.layers, cfg.heads)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    _train(cfg, model, opt, gen, data["train"], out, progress)
    model.eval()
    results: dict[str, Any] = {
        "objective": cfg.objective,
        "seed": cfg.seed,
        "bits_per_character": bits_per_character(model, data["held"]),
        "train_seconds_this_invocation": time.perf_counter() - start,
    }
    if cfg.task == "arithmetic":
        results["exact_match"] = exact_match(model, data["vocab"], data["test"])
    write_json(out / "results.json", {**results, "meta": run_metadata(cfg.seed)})
    return results


def _train(
    cfg: LMConfig,
    model: GPT,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    train: torch.Tensor,
    out: Path,
    progress: bool,
) -> None:
    """The optimiser steps from the run's last checkpoint (if any) to ``cfg.steps``: metrics
    lines every ``log_every`` steps (those after the checkpoint dropped on resume), a
    checkpoint every ``checkpoint_every``."""
    step, ckpt = 0, out / "checkpoints" / "last.pt"
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        step = state["step"]
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
    atomic_write_text(metrics, "".join(f"{ln}\n" for ln in kept))
    c = cfg.context
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not progress, desc=f"{cfg.objective} seed {cfg.seed}"
    )
    with metrics.open("a") as log:
        while step < cfg.steps:
            starts = torch.randint(0, len(train) - c - 1, (cfg.batch,), generator=gen).tolist()
            x = torch.stack([train[s : s + c] for s in starts])
            y = torch.stack([train[s + 1 : s + c + 1] for s in starts])
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            loss, terms = _loss(cfg, model, x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                log.write(json.dumps({"step": step, "loss": loss.item(), **terms}) + "\n")
                log.flush()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
                state.update(config=asdict(cfg), rng=gen.get_state(), step=step)
                save_checkpoint(state, ckpt)
    bar.close()


def _interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95% t-interval half-width over seeds."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    half = (  # one seed has no interval: None (JSON null), never NaN (not JSON)
        float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
        if len(v) > 1
        else None
    )
    return {"mean": float(v.mean()), "ci95": half, "n": len(v)}


def compare(
    base: LMConfig, seeds: list[int], out: str | Path, progress: bool = False
) -> dict[str, Any]:
    """Every objective × seed (resumable); ``summary.json`` and ``summary.md`` in ``out``."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct seeds, got {seeds}")
    out = Path(out)
    runs: dict[str, list[dict[str, Any]]] = {}
    for objective in OBJECTIVES:
        for seed in seeds:
            cfg = LMConfig(**{**asdict(base), "objective": objective, "seed": seed})
            name = f"{objective.replace('+', '_')}-seed{seed}"
            runs.setdefault(objective, []).append(train_lm(cfg, out / name, progress))
    keys = ["bits_per_character"] + (["exact_match"] if base.task == "arithmetic" else [])
    summary = {obj: {k: _interval([r[k] for r in rs]) for k in keys} for obj, rs in runs.items()}
    write_json(out / "summary.json", {"summary": summary, "runs": runs, "config": asdict(base)})
    lines = [
        f"# CE vs CE + MCE ({base.task}, {len(seeds)} seeds, mean ± 95% t-interval)",
        "",
        "| objective | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for obj, s in summary.items():
        lines.append(
            f"| {obj} | "
            + " | ".join(
                f"{s[k]['mean']:.4f}"
                + (f" ± {s[k]['ci95']:.4f}" if s[k]["ci95"] is not None else " (one seed)")
                for k in keys
            )
            + " |"
        )
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return summary
