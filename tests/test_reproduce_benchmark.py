"""``benchmarks/reproduce.py`` runs a row tiny on the CPU; the README's table is its files'."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from manifold_ssl.data.synthetic import write_image_folder

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "reproduce.py"
TINY = [
    "--model.width=8",
    "--model.projector=32-16",
    "--train.batch_size=16",
    "--data.image_size=16",
    "--data.val_fraction=0.25",
    "--train.log_every=1",
]


def _module():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_runs_end_to_end_and_a_cut_row_is_partial(tmp_path, capsys):
    module = _module()
    data = write_image_folder(tmp_path / "cifar", 3, {"train": 16, "test": 8}, (20, 28))
    out = tmp_path / "results"
    common = ["--data", str(data), "--root", str(tmp_path / "root"), "--out", str(out)]
    common += ["--runs", str(tmp_path / "runs")]
    row = "lightly_cifar10_mmcr"
    assert module.main([row, *common, *TINY, "--train.epochs=2"]) == 0
    (path,) = out.glob(f"{row}-*.json")
    record = json.loads(path.read_text())
    assert path.name == f"{row}-cpu.json" and record["device"] == "cpu"
    assert record["status"] == "result" and record["stopped_by"] == "finished"
    assert [p["epoch"] for p in record["knn_curve"]] == [1, 2]  # the monitor every epoch
    assert (record["epochs_run"], record["epochs_planned"]) == (2, 2)
    assert record["steps"] == 2 * (36 // 16)  # 48 images less the validation quarter
    assert record["knn_test_best"]["epoch"] in (1, 2)
    assert "validation" in record["knn_test_best"]["selection"]
    # the last epoch's number is the test kNN `evaluate` gives the same run
    run = Path(record["run_dir"])
    from manifold_ssl.cli import main

    assert main(["evaluate", str(run), "--quiet"]) == 0
    evaluated = json.loads((run / "eval.json").read_text())["results"]["pretrained"]
    assert record["knn_test_last"] == evaluated["knn_test_accuracy"]
    # and the best-validation epoch's is `evaluate --checkpoint best`'s
    assert main(["evaluate", str(run), "--checkpoint", "best", "--quiet"]) == 0
    (best,) = run.glob("eval-best*.json")
    evaluated = json.loads(best.read_text())["results"]["pretrained"]
    assert record["knn_test_best"]["knn_test"] == evaluated["knn_test_accuracy"]
    assert record["images_per_s"] > 0 and 0 < record["train_s"] < record["wall_s"]
    # the monitor's time is logged per epoch and is part of what is not training
    assert 0 < record["monitor_s"] < record["wall_s"] - record["train_s"]
    assert record["torch_version"] and "git_hash" in record
    assert module.table(out).count("(2 epochs, cpu,") == 1
    # a row the budget cuts short is written as partial and stays out of the table
    cut = tmp_path / "cut"
    argv = [row, *common[:-4], "--out", str(cut), "--runs", str(tmp_path / "runs2")]
    assert module.main([*argv, "--budget-s", "0.01", *TINY, "--train.epochs=50"]) == 0
    partial = json.loads(next(cut.glob("*.json")).read_text())
    assert partial["status"] == "partial" and partial["stopped_by"] == "budget"
    assert "not run yet" in module.table(cut).splitlines()[4]  # the MMCR row
    module.figure(tmp_path / "time.png", cut)
    assert (tmp_path / "time.png").stat().st_size > 0


def test_the_readme_table_is_the_result_files():
    module = _module()
    readme = (ROOT / "README.md").read_text()
    table = module.table()
    assert table in readme, "regenerate: python benchmarks/reproduce.py --table"
    rows = [
        ln for ln in readme.splitlines() if re.match(r"\| (SimCLR|BYOL|Barlow|MMCR|CLAMP) ", ln)
    ]
    assert len(rows) >= len(module.ROWS)
