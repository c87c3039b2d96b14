"""Shared test settings (imported as ``helpers``; tests/ is on sys.path via conftest)."""

from __future__ import annotations

# A model small enough for a few CPU seconds of pretraining on digits.
TINY_MODEL = [
    "--model.width=4",
    "--model.projector=32-16",
    "--views.num_views=2",
    "--train.batch_size=64",
]


def tiny_run_args(tmp_path, *extra: str) -> list[str]:
    """``pretrain`` arguments for a tiny run whose data and runs live under ``tmp_path``."""
    return [
        f"--data.root={tmp_path / 'data'}",
        f"--train.out_dir={tmp_path / 'runs'}",
        *TINY_MODEL,
        *extra,
    ]
