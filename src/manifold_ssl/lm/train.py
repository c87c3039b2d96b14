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

from ..losses.mce_lm import mce_lm_loss
from ..runinfo import atomic_write_text, run_metadata, write_json
from ..schedules import warmup_cosine
from ..training.checkpoint import load_checkpoint, save_checkpoint
from .model import GPT
from .tasks import CharVocab, arithmetic_problems, text_splits

__all__ = ["LMConfig", "compare", "train_lm"]

OBJECTIVES = ("ce", "ce+mce")


@dataclass
class LMConfig:
    task: str = "arithmetic"  # arithmetic | text
    text: str | None = None  # the text file of task "text"
    objective: str = "ce"  # ce | ce+mce
    seed: int = 0
    steps: int = 400
    batch: int = 16
    context: int = 128
    width: int = 32
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 20
    mce_order: int | None = 4  # Taylor order of log Q (None: exact, ~6x slower on a CPU)
    mce_eps: float = 1e-4
    mce_weight: float = 1.0  # CE + mce_weight · MCE (Eq. 23: 1)
    train_problems: int = 3000
    test_problems: int = 200
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.task not in ("arithmetic", "text"):
            raise ValueError(f"task must be 'arithmetic' or 'text', got {self.task!r}")
        if self.task == "text" and not self.text:
            raise ValueError("task 'text' needs --text PATH")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        for name in ("steps", "batch", "context", "width", "layers", "heads", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.mce_weight >= 0:
            raise ValueError(f"mce_weight must be >= 0, got {self.mce_weight}")


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
    step = 0
    ckpt = out / "checkpoints" / "last.pt"
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        step = state["step"]
    metrics = out / "metrics.jsonl"
    kept = (
        [ln for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= step]
        if metrics.exists()
        else []
    )
    atomic_write_text(metrics, "".join(f"{ln}\n" for ln in kept))
    train, c = data["train"], cfg.context
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not progress, desc=f"{cfg.objective} seed {cfg.seed}"
    )
    start = time.perf_counter()
    with metrics.open("a") as log:
        while step < cfg.steps:
            starts = torch.randint(0, len(train) - c - 1, (cfg.batch,), generator=gen)
            x = torch.stack([train[s : s + c] for s in starts.tolist()])
            y = torch.stack([train[s + 1 : s + c + 1] for s in starts.tolist()])
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
                save_checkpoint(
                    {
                        "config": config,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "rng": gen.get_state(),
                        "step": step,
                    },
                    ckpt,
                )
    bar.close()
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
