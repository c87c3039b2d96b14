"""``benchmarks/gpu.py`` runs, tiny, on the CPU: the prepared GPU benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


def test_the_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--batch", "16", "--width", "4", "--steps", "4", "--window", "2"]
    args += ["--views", "2", "--no-compile", "--workers", "0", "--out", str(out)]
    args += ["--batch-large", "24", "--peak-tflops", "0.5"]
    assert module.main([*args, "--root", str(tmp_path / "root")]) == 0
    result = json.loads(out.read_text())
    cases = {(r["case"], r["precision"]) for r in result["throughput"]}
    assert ("MMCR K=2", "float32") in cases and ("SimCLR K=2", "bf16+channels_last") in cases
    assert ("MMCR K=2", "bf16+channels_last+polar") in cases  # the matmul-only nuclear norm
    assert all(r["images_per_s"] > 0 for r in result["throughput"])
    large = [r for r in result["throughput"] if r["batch"] == 24]
    assert {r["case"] for r in large} == {"MMCR K=2", "SimCLR K=2"}
    for r in result["throughput"]:  # FLOP/s = FLOPs per step × steps per second; MFU = / peak
        rate = r["step_flops"] * r["images_per_s"] / r["batch"] / 1e12
        assert r["tflops"] == rate > 0 and r["mfu"] == rate / 0.5
    assert result["baseline_K2"]["images_per_s"] > 0 and result["evaluate"]["seconds"] > 0
    assert "| MMCR K=2 | float32 | 16 |" in out.with_suffix(".md").read_text()
