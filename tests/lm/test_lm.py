"""The language-model experiment: a causal model, correct generated problems, both objectives
descending, exact resume, and the comparison over seeds from the CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch

from manifold_ssl.cli import main
from manifold_ssl.lm import GPT, CharVocab, LMConfig, arithmetic_problems, train_lm
from manifold_ssl.lm import train as lm_train

TINY = {"steps": 6, "batch": 4, "context": 64, "width": 16, "layers": 1, "heads": 2}
TINY |= {"train_problems": 60, "test_problems": 5, "log_every": 1, "checkpoint_every": 3}


def test_the_model_is_causal_and_its_head_is_the_embedding():
    torch.manual_seed(0)
    model = GPT(20, context=16, width=16, layers=2, heads=4).eval()
    ids = torch.randint(0, 20, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 20
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # the future does not leak back
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    assert model.head_embeddings is model.tokens.weight


def _replay(question: str) -> int:
    """The answer recomputed from the words of a question."""
    count = int(re.search(r"has (\d+)", question).group(1))
    for op, n in re.findall(r"(gets|gives away|doubles)(?: (\d+))?", question):
        count = (
            count + int(n) if op == "gets" else count - int(n) if op == "gives away" else 2 * count
        )
    return count


def test_generated_problems_are_distinct_reproducible_and_right():
    problems = arithmetic_problems(300, seed=3)
    assert problems == arithmetic_problems(300, seed=3)
    assert len({p.question for p in problems}) == 300
    for p in problems:
        assert int(p.answer) == _replay(p.question) >= 0
        assert p.text.endswith(f"A: {p.answer}\n")
    vocab = CharVocab("".join(p.text for p in problems))
    assert vocab.decode(vocab.encode(problems[0].text).tolist()) == problems[0].text


@pytest.mark.parametrize("objective", ["ce", "ce+mce"])
def test_both_objectives_descend(tmp_path, objective):
    cfg = LMConfig(**{**TINY, "steps": 60, "lr": 1e-2, "warmup": 2}, objective=objective)
    train_lm(cfg, tmp_path / "run")
    records = [
        json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    ce = [r["ce"] for r in records]
    assert sum(ce[-5:]) / 5 < sum(ce[:5]) / 5 - 0.3
    if objective == "ce+mce":
        assert all(r["mce"] > 0 for r in records)


def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    cfg = LMConfig(**TINY, objective="ce+mce")
    full = train_lm(cfg, tmp_path / "full")
    real, calls = lm_train._loss, {"n": 0}

    def crash_on_the_fifth_step(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(lm_train, "_loss", crash_on_the_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        train_lm(cfg, tmp_path / "cut")
    monkeypatch.setattr(lm_train, "_loss", real)
    resumed = train_lm(cfg, tmp_path / "cut")  # from the step-3 checkpoint
    metrics = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("full", "cut")]
    assert metrics[0] == metrics[1]
    assert resumed["bits_per_character"] == full["bits_per_character"]
    with pytest.raises(ValueError, match="another config"):
        train_lm(LMConfig(**{**TINY, "steps": 7}), tmp_path / "cut")


def test_cli_compares_objectives_over_seeds_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    args = ["lm", "--text", str(text), "--seeds", "0,1", "--steps", "3", "--batch", "2"]
    assert main([*args, "--out", str(tmp_path / "lm"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "lm" / "summary.json").read_text())["summary"]
    assert set(summary) == {"ce", "ce+mce"}
    assert summary["ce"]["bits_per_character"]["n"] == 2
    assert "mean ± 95% t-interval" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs --text"):
        LMConfig(task="text")


def test_bits_per_character_equals_the_window_by_window_mean():
    import math

    import torch.nn.functional as F

    from manifold_ssl.lm.train import bits_per_character

    torch.manual_seed(0)
    model = GPT(30, context=16).eval()
    ids = torch.randint(0, 30, (1000,))  # 62 full windows and a remainder of 7
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 16):
            y = ids[s + 1 : s + 17]
            total += float(F.cross_entropy(model(ids[s : s + len(y)][None])[0], y, reduction="sum"))
    expected = total / (len(ids) - 1) / math.log(2)
    assert bits_per_character(model, ids, batch=5) == pytest.approx(expected, rel=1e-6)


def test_lm_refuses_binary_text_and_bad_seeds_and_writes_valid_json(tmp_path, capsys):
    # issue 18.14 and 18.20: a .tar.gz grew to 3.9 GB of replacement characters; --seeds 0,0
    # was accepted; one seed wrote NaN into summary.json; --seeds a did not name the flag
    import gzip
    import json

    from manifold_ssl.cli import main

    blob = tmp_path / "data.tar.gz"
    with gzip.open(blob, "wb") as f:
        f.write(bytes(range(256)) * 100)
    out = tmp_path / "lm"
    assert main(["lm", "--text", str(blob), "--out", str(out)]) == 2
    assert "is binary data, not text" in capsys.readouterr().err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café ".encode("latin-1") * 400)
    assert main(["lm", "--text", str(latin), "--out", str(out)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    for seeds in ("0,0", "a"):
        with pytest.raises(SystemExit):
            main(["lm", "--seeds", seeds])
        assert "--seeds: expected distinct integers" in capsys.readouterr().err
    args = ["lm", "--seeds", "3", "--steps", "2", "--batch", "2", "--out", str(out), "--quiet"]
    assert main([*args, "--mce-weight", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    assert summary["summary"]["ce"]["bits_per_character"]["ci95"] is None
    assert summary["config"]["mce_weight"] == 0.5
    assert "(one seed)" in (out / "summary.md").read_text()
