"""Mutation check: does the test suite catch small wrong edits to the objectives?

Each mutation is one textual edit (a sign, a missing ½, swapped pairings or roles, a dropped
cap, a float32 Gram or normalisation, a dropped refinement) applied to a temporary copy of
``src/manifold_ssl``; the loss tests (``tests/losses``, the gloo test of the distributed
objectives excluded for time) then run against that copy, stopping at the first failure. A
mutation is *caught* when some test fails; the table names the first. Every mutation must be
caught; an edit whose text is no longer in the source is reported as stale (fix the list).
A *float32-only* mutation leaves float64 input computing exactly as before (it drops the
float64 working precision for float32 input alone); for it the float64 oracle tests
(``tests/losses/test_oracles.py``) must also still pass, or it is reported as ``not-f32``
(fix the mutation): so the table shows a float32 regression caught by the float32 tests.

    python benchmarks/mutations.py [--out results/mutations.json] [--only NAME ...]

Takes about a minute per mutation on 2 cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "manifold_ssl"
TESTS = ["tests/losses"]
#: float64-only tests a float32-only mutation must leave passing
FLOAT64_TESTS = ["tests/losses/test_oracles.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to src/manifold_ssl
    old: str
    new: str
    float32_only: bool = False


MUTATIONS = [
    Mutation("mmcr: sign of the nuclear norm", "losses/mmcr.py", "loss = -nuc", "loss = nuc"),
    Mutation(
        "mmcr: centroids summed, not averaged",
        "losses/_common.py",
        "centroids = (inv.transpose(1, 2) @ z64).squeeze(1) / z.shape[1]",
        "centroids = (inv.transpose(1, 2) @ z64).squeeze(1)",
    ),
    Mutation(
        "mmcr: float32 normalisation",
        "losses/_common.py",
        "centroids = (inv.transpose(1, 2) @ z64).squeeze(1) / z.shape[1]",
        "centroids = (inv.float().transpose(1, 2) @ z.float()).squeeze(1).double() / z.shape[1]",
    ),
    Mutation(
        "nuclear norm: float32 Gram",
        "geometry/spectral.py",
        "lam, v = torch.linalg.eigh(reduce(a.transpose(-1, -2) @ a))",
        "lam, v = torch.linalg.eigh(reduce((a.float().transpose(-1, -2) @ a.float()).double()))",
    ),
    Mutation(
        "nuclear norm: level 2 dropped",
        "geometry/spectral.py",
        "    if n_small == 0:\n",
        "    if True:\n",
    ),
    Mutation(
        "matrix_ssl: online branch first (roles swapped)",
        "losses/matrix_ssl.py",
        "self.target_first = True",
        "self.target_first = False",
    ),
    Mutation(
        "matrix_ssl: alignment's log on the teacher",
        "losses/matrix_ssl.py",
        "log_q = matrix_log(c22 + mu * eye, order)\n"
        "            alignment = -((c11 + mu * eye) * log_q.transpose(-1, -2)).sum()",
        "log_q = matrix_log(c11 + mu * eye, order)\n"
        "            alignment = -((c22 + mu * eye) * log_q.transpose(-1, -2)).sum()",
    ),
    Mutation(
        "methods: pairings added, not averaged (missing ½)",
        "methods/method.py",
        'weight = 1.0 if self.spec.combine == "sum" else 0.5',
        "weight = 1.0",
    ),
    Mutation(
        "methods: pairings (p1, t1), (p2, t2) instead of crossed",
        "methods/method.py",
        "loss_a, terms_a = self.loss_fn(first[:, 0], second[:, 1], return_terms=True)\n"
        "        loss_b, terms_b = self.loss_fn(first[:, 1], second[:, 0], return_terms=True)",
        "loss_a, terms_a = self.loss_fn(first[:, 0], second[:, 0], return_terms=True)\n"
        "        loss_b, terms_b = self.loss_fn(first[:, 1], second[:, 1], return_terms=True)",
    ),
    Mutation(
        "clamp: 1.5 cap on r_i + r_j dropped",
        "losses/clamp.py",
        "_OFFICIAL = _Form(1, True, 1e-12, 1e-6, 1.5, 1e-3, 0.5, 1e-6)",
        "_OFFICIAL = _Form(1, True, 1e-12, 1e-6, math.inf, 1e-3, 0.5, 1e-6)",
    ),
    Mutation(
        "clamp: missing ½ of the pair sum",
        "losses/clamp.py",
        "_OFFICIAL = _Form(1, True, 1e-12, 1e-6, 1.5, 1e-3, 0.5, 1e-6)",
        "_OFFICIAL = _Form(1, True, 1e-12, 1e-6, 1.5, 1e-3, 1.0, 1e-6)",
    ),
    Mutation(
        "clamp: float32 distances",
        "losses/clamp.py",
        "out = _clamp(to_float64(z), r_s, spec, return_terms)",
        "out = _clamp(z.float(), r_s, spec, return_terms)",
    ),
    Mutation(
        "simclr: an anchor counted as its own positive",
        "losses/simclr.py",
        "pos_sum = (pos.sum(dim=2) - pos.diagonal(dim1=1, dim2=2)).reshape(b * k)",
        "pos_sum = pos.sum(dim=2).reshape(b * k)",
    ),
    Mutation(
        "simclr: bf16 under autocast",
        "losses/simclr.py",
        "@float32_inside\ndef simclr_loss(",
        "def simclr_loss(",
    ),
    Mutation(
        "barlow twins: sign of the off-diagonal term",
        "losses/barlow_twins.py",
        "loss = on_diag + lambd * off_diag",
        "loss = on_diag - lambd * off_diag",
    ),
    Mutation(
        "byol: pairings averaged, not summed",
        "methods/method.py",
        'MethodSpec("byol", "predict", predictor=True, target="ema", combine="sum")',
        'MethodSpec("byol", "predict", predictor=True, target="ema")',
    ),
    Mutation(
        "nuclear norm: level 2 keeps only what a one-level Gram keeps",
        "geometry/spectral.py",
        "floor = torch.maximum(mu.amax(dim=-1, keepdim=True) * k * eps, top * (max(rows, k) * eps) ** 2)",
        "floor = top * k * eps",
    ),
    Mutation(
        "clamp: radius over m, not min(D, m)",
        "losses/clamp.py",
        "n_r = min(dim, m) if spec.rank_by_dim else m",
        "n_r = m",
    ),
    # float32-only: float64 input computes exactly as before, so only a test that runs the
    # objectives in float32 (against float64 truth) can catch them
    Mutation(
        "mmcr: float32 centroids for float32 input",
        "losses/_common.py",
        "z64 = z.to(torch.float64)\n        norms",
        "z64 = z if z.dtype == torch.float32 else z.to(torch.float64)\n        norms",
        float32_only=True,
    ),
    Mutation(
        "nuclear norm: float32 Gram eigensystem for float32 input",
        "geometry/spectral.py",
        "out: torch.Tensor = _NuclearNorm.apply(to_float64(x), None, None)",
        "out: torch.Tensor = _NuclearNorm.apply(\n"
        "            x if x.dtype == torch.float32 else to_float64(x), None, None\n"
        "        )",
        float32_only=True,
    ),
    Mutation(
        "clamp: float32 distances for float32 input",
        "losses/clamp.py",
        "out = _clamp(to_float64(z), r_s, spec, return_terms)",
        "out = _clamp(z if z.dtype == torch.float32 else to_float64(z), r_s, spec, return_terms)",
        float32_only=True,
    ),
]


def run_one(m: Mutation, python: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "manifold_ssl"
        shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
        path = copy / m.file
        text = path.read_text()
        if text.count(m.old) != 1:
            return {"mutation": m.name, "status": "stale", "first_failure": None, "seconds": 0.0}
        path.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        where = subprocess.run(
            [python, "-c", "import manifold_ssl; print(manifold_ssl.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(tmp):
            raise RuntimeError(f"the mutated copy is not the one imported: {where}")
        start = time.perf_counter()

        def pytest(tests: list[str]) -> tuple[int, list[str]]:
            proc = subprocess.run(
                [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            return proc.returncode, re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)

        code, failed = pytest(TESTS)
        status = "caught" if code != 0 else "missed"
        if m.float32_only and status == "caught":
            code64, failed64 = pytest(FLOAT64_TESTS)
            if code64 != 0:  # it changes float64 results too: not the regression it names
                status, failed = "not-f32", failed64
        return {
            "mutation": m.name,
            "float32_only": m.float32_only,
            "status": status,
            "first_failure": failed[0] if failed else None,
            "seconds": time.perf_counter() - start,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/mutations.json"))
    parser.add_argument("--only", nargs="*", help="run only mutations whose name contains these")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    rows = []
    for m in chosen:
        row = run_one(m, sys.executable)
        rows.append(row)
        print(f"{row['status']:>7}  {m.name:<62} {row['first_failure'] or ''}", flush=True)
    missed = [r for r in rows if r["status"] != "caught"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} mutations caught")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tests": TESTS, "mutations": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
