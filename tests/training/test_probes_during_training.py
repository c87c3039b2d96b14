"""Geometry probes during training: they leave training untouched, measure what they say,
keep to their cost budget, and continue their schedule across a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manifold_ssl.geometry.manifold_stats import packing_statistics
from manifold_ssl.probes import alignment_uniformity
from manifold_ssl.probes import training as probes_module
from manifold_ssl.probes.settings import COST_KEYS, PROBE_METRICS
from manifold_ssl.run import pretrain
from manifold_ssl.run.build import training_probe
from manifold_ssl.runinfo import read_metrics


def _records(run_dir):
    return read_metrics(run_dir / "metrics.jsonl")


def test_probes_leave_the_training_trajectory_unchanged(tiny_cfg):
    plain = pretrain(tiny_cfg("--train.max_steps=8"), progress=False)
    probed = pretrain(
        tiny_cfg("--train.max_steps=8", "--probes.every_steps=2", "--probes.knn_bank=100"),
        progress=False,
    )
    loss = lambda run: [(r["step"], r["loss"]) for r in _records(run.run_dir) if "loss" in r]  # noqa: E731
    assert loss(probed) == loss(plain)
    probes = [r for r in _records(probed.run_dir) if "probe/seconds" in r]
    steps = [r["step"] for r in probes]
    assert steps[0] == 0 and steps == sorted(set(steps))
    assert all(np.diff(steps) >= 2)  # never closer than the interval
    for key in (*PROBE_METRICS, "coherence/all/within", "coherence/shuffled/across"):
        assert all(np.isfinite(r[f"probe/{key}"]) for r in probes), key
    # every metric the probe logs has its panel (the plots read PROBE_METRICS): a new metric
    # missing from the table fails here instead of silently having no figure
    logged = {k.removeprefix("probe/") for k in probes[0] if k.startswith("probe/")}
    unplotted = {k for k in logged if not k.startswith("coherence/")} - set(PROBE_METRICS)
    assert unplotted == set(COST_KEYS), unplotted
    hists = read_metrics(probed.run_dir / "probes" / "pair_distances.jsonl")
    assert [h["step"] for h in hists] == steps and all(len(h["counts"]) == 40 for h in hists)


def test_alignment_and_uniformity_match_their_definitions(gen):
    z = torch.randn(12, 3, 5, generator=gen, dtype=torch.float64)
    align, uniform = alignment_uniformity(z)
    u = z / z.norm(dim=-1, keepdim=True)
    pos = [
        ((u[b, i] - u[b, j]) ** 2).sum()
        for b in range(12)
        for i in range(3)
        for j in range(i + 1, 3)
    ]
    neg = [
        torch.exp(-2 * ((u[a, 0] - u[b, 0]) ** 2).sum())
        for a in range(12)
        for b in range(12)
        if a != b
    ]
    assert align == pytest.approx(float(torch.stack(pos).mean()))
    assert uniform == pytest.approx(float(torch.log(torch.stack(neg).mean())))


def test_packing_statistics_conventions(gen):
    z = torch.randn(20, 4, 6, generator=gen)
    paper = packing_statistics(z, r_s=2.0, convention="paper")
    code = packing_statistics(z, r_s=2.0, convention="code")
    np.testing.assert_allclose(paper["radius"], 2.0 * paper["size"], rtol=1e-6)
    # the code's count: reach s_i + s_j (no r_s), itself included
    zt = torch.nn.functional.normalize(z - z.reshape(80, -1).mean(0), dim=-1)
    q = zt.mean(1)
    s = torch.as_tensor(code["size"])
    expected = (torch.cdist(q, q) < s[:, None] + s[None]).sum(1).numpy()
    np.testing.assert_array_equal(code["neighbours"], expected)
    assert (code["neighbours"] >= 1).all()
    with pytest.raises(ValueError, match="convention"):
        packing_statistics(z, convention="other")


def test_probe_steps_follow_the_config_and_a_flop_budget_not_the_clock(
    tiny_cfg, monkeypatch, tmp_path
):
    # issue 18.17: probe steps depended on the machine's load (a wall-clock budget), a short
    # run got only the step-0 probe, silently
    from manifold_ssl.data.splits import load_splits

    cfg = tiny_cfg("--probes.every_steps=10", "--probes.max_cost=0.1")
    splits = load_splits(cfg.data.name, cfg.data.root, None, cfg.data.val_fraction, 0)
    monkeypatch.setattr(probes_module.time, "perf_counter", lambda: pytest.fail("the clock"))
    probe = training_probe(cfg, splits, torch.device("cpu"), tmp_path)
    assert probe.due(0, 0)  # the initial network: always probed
    probe.taken, probe.probe_flops, probe.last_step = 1, 100, 0  # as after a 100-FLOP probe
    assert not probe.due(9, 10**6)  # not a multiple of the interval
    # a second 100-FLOP probe needs 2000 training FLOPs: 2 · 100 <= 0.1 · trained
    assert not probe.due(10, 1999) and probe.skipped == 1
    assert probe.due(20, 2000)
    probe.taken += 1
    assert probe.due(23, 0, last=True)  # the last step, whatever the budget
    assert "1 of 3 probes skipped by probes.max_cost=0.1" in probe.summary()
    probe.resume_at(57)
    assert probe.skipped == 6 - 2  # steps 0, 10, 20, 30, 40, 50 planned; two taken


def test_a_run_probes_the_same_steps_on_any_machine_and_its_last_step(tiny_cfg, capsys):
    args = ("--train.max_steps=7", "--probes.every_steps=3", "--probes.knn_bank=50")
    steps = []
    for _ in range(2):
        run = pretrain(tiny_cfg(*args, "--probes.max_cost=0.01"), progress=True)
        steps.append([r["step"] for r in _records(run.run_dir) if "probe/flops" in r])
    assert steps[0] == steps[1] and steps[0][0] == 0 and steps[0][-1] == 7
    assert "2 of 3 probes skipped by probes.max_cost=0.01" in capsys.readouterr().out
    cheap = ("--probes.images=8", "--probes.coherence=false", "--probes.capacity_manifolds=0")
    generous = pretrain(tiny_cfg(*args, *cheap, "--probes.max_cost=0.5"), progress=False)
    assert [r["step"] for r in _records(generous.run_dir) if "probe/flops" in r] == [0, 3, 6, 7]


def test_the_objective_convention_counts_the_pairs_the_official_loss_counts(gen):
    from manifold_ssl.losses import clamp_loss

    z = torch.randn(24, 4, 16, generator=gen, dtype=torch.float64) + 3 * torch.randn(
        24, 1, 16, generator=gen, dtype=torch.float64
    )
    for r_s in (0.5, 1.0, 3.0):
        _, terms = clamp_loss(z, r_s=r_s, return_terms=True)
        counted = packing_statistics(z, r_s=r_s, convention="official")["neighbours"].sum()
        assert counted == int(terms["n_overlapping_pairs"]), r_s


def test_the_packaged_clamp_dynamics_packs_its_sub_manifolds(tmp_path):
    # issue 18.18: with r_s = 7 the count sat at N - 1 all run (215.0 -> 214.1): Fig. 3(a)
    # showed nothing; 8 of the recipe's 40 epochs here
    from manifold_ssl.config import apply_overrides, load_recipe

    def neighbours(*extra: str) -> tuple[float, float]:
        cfg = apply_overrides(
            load_recipe("digits_clamp_dynamics"),
            [
                f"--data.root={tmp_path / 'data'}",
                f"--train.out_dir={tmp_path / 'runs'}",
                "--train.epochs=8",
                "--train.knn_every=0",
                "--probes.every_steps=35",
                "--probes.coherence=false",
                "--probes.capacity_manifolds=0",
                "--probes.knn_bank=0",
                *extra,
            ],
        )
        run = pretrain(cfg, progress=False)
        probes = [r for r in _records(run.run_dir) if "probe/neighbours" in r]
        assert probes[0]["step"] == 0 and probes[-1]["step"] == run.step
        return probes[0]["probe/neighbours"], probes[-1]["probe/neighbours"]

    first, last = neighbours()  # measured: 254.9 -> 139.4
    assert first > 250 and last < 0.6 * first  # 256 probe images, all overlapping at first
    first, last = neighbours("--method.loss={r_s: 7.0, form: official}")
    assert last > 0.85 * first  # r_s = 7: no pair can separate on these images
