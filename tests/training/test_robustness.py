"""What a user can do wrong, and what can go wrong around a run: each gets the right numbers or
a clear error, and no training already done is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import tiny_run_args

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data import load_dataset
from manifold_ssl.run import train as pretrain
from manifold_ssl.runinfo import run_lock
from manifold_ssl.training import load_checkpoint, save_checkpoint
from manifold_ssl.training.metrics import read_metrics


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def _image(path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------- data
def test_every_split_numbers_classes_by_the_training_split(tmp_path):
    src = tmp_path / "set"
    for cls, value in (("bird", 10), ("cat", 20), ("dog", 30)):
        _image(src / "train" / cls / "0.png", value)
    _image(src / "test" / "cat" / "0.png", 20)  # no "bird" in test
    _image(src / "test" / "dog" / "0.png", 30)
    train = load_dataset("imagefolder", "train", tmp_path / "data", str(src))
    test = load_dataset("imagefolder", "test", tmp_path / "data", str(src))
    assert train.classes == test.classes == ["bird", "cat", "dog"]
    assert test.labels.tolist() == [1, 2]  # cat, dog: the indices train gives them
    _image(src / "test" / "fox" / "0.png", 40)
    with pytest.raises(ValueError, match="'fox'.*not a class of the training split"):
        load_dataset("imagefolder", "test", tmp_path / "data", str(src))


def test_an_edited_dataset_is_decoded_again_and_a_corrupt_cache_rebuilt(tmp_path):
    src = tmp_path / "set"
    _image(src / "train" / "a" / "0.png", 10)
    _image(src / "train" / "b" / "0.png", 20)
    assert load_dataset("imagefolder", "train", tmp_path / "data", str(src)).classes == ["a", "b"]
    _image(src / "train" / "c" / "0.png", 30)  # a class added later
    again = load_dataset("imagefolder", "train", tmp_path / "data", str(src))
    assert again.classes == ["a", "b", "c"] and len(again) == 3
    for cache in (tmp_path / "data" / "cache").glob("*.pt"):
        cache.write_bytes(cache.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="cannot be read"):
        rebuilt = load_dataset("imagefolder", "train", tmp_path / "data", str(src))
    assert torch.equal(rebuilt.images, again.images)
    assert load_dataset("imagefolder", "train", tmp_path / "data", str(src)).classes == [
        "a",
        "b",
        "c",
    ]


def test_a_data_path_that_is_no_archive_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an archive")
    args = tiny_run_args(tmp_path, "--data.name=imagefolder", f"--data.path={bad}")
    assert main(["pretrain", "--quiet", *args]) == 2
    assert "neither a folder nor a readable .tar" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_one_class_dataset_is_not_scored(tmp_path, capsys):
    src = tmp_path / "set"
    for i in range(40):
        _image(src / "train" / "only" / f"{i}.png", i)
        _image(src / "test" / "only" / f"{i}.png", i)
    args = tiny_run_args(
        tmp_path,
        "--data.name=imagefolder",
        f"--data.path={src}",
        "--views.preset=cifar",
        "--model.small_images=true",
        "--train.batch_size=8",
        "--train.epochs=1",
        "--train.knn_every=0",
    )
    assert main(["pretrain", "--quiet", *args]) == 0
    assert "evaluation skipped: the dataset has one class" in capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "eval.json").exists()
    assert main(["evaluate", str(run)]) == 2
    assert "at least two classes" in capsys.readouterr().err


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "override, message",
    [
        ("--data.val_fraction=0", "data.val_fraction must be in (0, 1)"),
        ("--train.checkpoint_every=0", "train.checkpoint_every must be >= 1"),
        ("--eval.knn_temperature=0", "eval.knn_temperature must be > 0"),
        ("--train.log_every=0", "train.log_every must be >= 1"),
        ("--eval.linear_weight_decays=[]", "eval.linear_weight_decays must be a non-empty list"),
        ("--train.max_steps=-5", "train.max_steps must be >= 0"),
        ("--optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        ("--optim.min_lr_ratio=5", "optim.min_lr_ratio must be in [0, 1]"),
        ("--train.num_threads=-3", "train.num_threads must be >= 0"),
        ("--train.device=tpu", "train.device must be 'auto', 'cpu'"),
        ("--method.name=moco", "method.name must be one of"),
        ("--model.backbone=vit", "model.backbone must be one of"),
    ],
)
def test_degenerate_settings_are_refused_before_training(tmp_path, capsys, override, message):
    assert main(["pretrain", "--quiet", *tiny_run_args(tmp_path), override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing left behind


def test_a_recipe_with_a_yaml_error_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train: {epochs: 3\n")
    assert main(["pretrain", str(recipe)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_a_rejected_override_leaves_the_config_it_was_applied_to_unchanged():
    cfg = load_recipe("digits_mmcr")
    with pytest.raises(ValueError):
        apply_overrides(cfg, ["--optim.lr=0.5", "--data.val_fraction=0"])
    assert cfg.optim.lr == 1e-3 and cfg.data.val_fraction == 0.15


def test_pretrain_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for key in ("--data.val_fraction=0.1", "--train.checkpoint_every_steps=0", "--eval.knn_k=200"):
        assert key in out


def test_simulate_refuses_a_cell_that_cannot_fit_in_memory():
    from manifold_ssl.experiments.simulate import simulate_uniform

    with pytest.raises(ValueError, match="needs .* GiB"):
        simulate_uniform([1024], [10**12], max_min_dim=2048, progress=False)


# --------------------------------------------------------------------------- training not lost
def test_a_kill_before_the_first_epoch_ends_loses_at_most_a_few_steps(tmp_path, tiny_cfg):
    full = pretrain(tiny_cfg("--train.epochs=1"), progress=False)
    code = "import sys\nfrom manifold_ssl.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = tiny_run_args(
        tmp_path / "killed",
        "--train.epochs=1",
        "--train.log_every=1",
        "--train.knn_every=0",
        "--train.checkpoint_every_steps=3",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "pretrain", "--quiet", "--no-eval", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    runs = tmp_path / "killed" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(runs.glob("*/metrics.jsonl")) if runs.exists() else []
        if found and found[0].read_text().count("\n") >= 7:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no handler, no last checkpoint
    proc.communicate(timeout=60)
    (run,) = runs.iterdir()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 0 and 3 <= state["step"] < 19 and state["step"] % 3 == 0
    assert main(["pretrain", "--quiet", "--no-eval", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == full.step
    a, b = losses(full.run_dir), losses(run)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


@pytest.mark.parametrize("failing_step", [20, 24])  # the first step of epoch 2, and a later one
def test_an_exception_in_the_loop_checkpoints_the_last_completed_step(
    tiny_cfg, monkeypatch, failing_step
):
    from manifold_ssl.methods import SSLMethod

    full = pretrain(tiny_cfg(), progress=False)
    forward, calls = SSLMethod.forward, {"n": 0}

    def failing(self, views, labels=None):
        calls["n"] += 1
        if calls["n"] == failing_step:  # 19 steps per epoch
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(self, views, labels)

    monkeypatch.setattr(SSLMethod, "forward", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        pretrain(tiny_cfg(), progress=False, run_dir=full.run_dir.parent / "crashed")
    monkeypatch.setattr(SSLMethod, "forward", forward)
    crashed = full.run_dir.parent / "crashed"
    assert load_checkpoint(crashed / "checkpoints" / "last.pt")["step"] == failing_step - 1
    resumed = pretrain(tiny_cfg(), resume=crashed, progress=False)
    assert resumed.step == full.step
    a, b = losses(full.run_dir), losses(crashed)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc] unexpected pos 2088064 vs 2087960"),
    ],
)
def test_a_full_disk_keeps_the_old_checkpoint_and_says_so(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    save_checkpoint({"config": {}, "model": {"w": torch.ones(3)}, "step": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 1000)
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="no space left on the device while writing"):
        save_checkpoint({"config": {}, "model": {"w": torch.zeros(3)}, "step": 2}, path)
    assert not (tmp_path / "last.pt.tmp").exists()
    assert load_checkpoint(path)["step"] == 1


def test_resume_after_a_max_steps_stop_runs_to_the_end(tmp_path, capsys):
    args = tiny_run_args(tmp_path, "--train.epochs=1", "--train.knn_every=0")
    assert main(["pretrain", "--quiet", "--no-eval", *args, "--train.max_steps=3"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    printed = capsys.readouterr()
    hint = f"stopped (max_steps) at step 3; resume with: manifold-ssl pretrain --resume {run}"
    assert hint in printed.out + printed.err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    assert main(["pretrain", "--quiet", "--no-eval", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1221 // 64


def test_a_torn_last_metrics_line_is_skipped_and_resume_still_works(tiny_cfg):
    stopped = pretrain(tiny_cfg("--train.max_steps=5"), progress=False)
    metrics = stopped.run_dir / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 6, "loss": -1')  # killed mid-write
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert max(losses(stopped.run_dir)) == 5
    with pytest.warns(UserWarning, match="incomplete last line"):
        resumed = pretrain(tiny_cfg(), resume=stopped.run_dir, progress=False)
    assert resumed.status == "finished"
    steps = [r["step"] for r in read_metrics(metrics) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == resumed.step


def test_a_second_writer_of_a_run_directory_is_refused(tiny_cfg):
    stopped = pretrain(tiny_cfg("--train.max_steps=2"), progress=False)
    with run_lock(stopped.run_dir), pytest.raises(ValueError, match="is in use by process"):
        pretrain(tiny_cfg(), resume=stopped.run_dir, progress=False)
    assert load_checkpoint(stopped.run_dir / "checkpoints" / "last.pt")["step"] == 2


def test_a_checkpoint_without_training_state_cannot_resume(tiny_cfg):
    stopped = pretrain(tiny_cfg("--train.max_steps=2"), progress=False)
    path = stopped.run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    del state["optimizer"]
    save_checkpoint(state, path)
    with pytest.raises(ValueError, match=r"lacks \['optimizer'\]"):
        pretrain(tiny_cfg(), resume=stopped.run_dir, progress=False)


# --------------------------------------------------------------------------- evaluation
def test_evaluate_takes_eval_overrides_only(tmp_path, capsys):
    args = tiny_run_args(tmp_path, "--train.epochs=1", "--train.knn_every=0")
    assert main(["pretrain", "--quiet", "--no-eval", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    argv = ["evaluate", "--quiet", str(run), "--eval.linear_weight_decays=[0.01]"]
    assert main([*argv, "--eval.baselines=false"]) == 0
    written = json.loads(
        (run / "eval-baselines=false_linear_weight_decays=_0.01_.json").read_text()
    )
    results = written["results"]
    assert set(results) == {"pretrained", "online_linear"}
    assert list(results["pretrained"]["linear_val_by_weight_decay"]) == ["0.01"]
    assert not (run / "eval.json").exists()  # the run's own evaluation was never made
    assert main(["evaluate", str(run), "--optim.lr=1"]) == 2
    assert "got --optim.lr=1" in capsys.readouterr().err


def _ddp_cli_worker(rank: int, rendezvous: str, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2
    )
    code = main(argv)
    assert code == 0 and not torch.distributed.is_initialized()


def test_ddp_with_sync_bn_and_fine_tuning_evaluates_on_rank_0(tmp_path):
    argv = [
        "pretrain",
        "--quiet",
        *tiny_run_args(tmp_path, "--train.epochs=1", "--train.knn_every=0"),
        "--model.sync_bn=true",
        "--eval.semi_supervised=[0.5]",
        "--eval.finetune_epochs=1",
        "--eval.linear_max_iter=20",
    ]
    mp.spawn(_ddp_cli_worker, args=(str(tmp_path / "rendezvous"), argv), nprocs=2, join=True)
    (run,) = (tmp_path / "runs").iterdir()
    results = json.loads((run / "eval.json").read_text())["results"]
    assert "finetune_0.5" in results


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_resume_and_evaluate_refuse_a_data_set_that_changed(tmp_path, capsys, loader):
    # issue 18.6: the stream loader trained on the new set, the memory loader crashed in
    # grid_sampler and said "--resume continues from it"
    from manifold_ssl.data.synthetic import write_image_folder

    folder = write_image_folder(tmp_path / "images", 3, {"train": 10, "test": 4}, (24, 24))
    args = tiny_run_args(
        tmp_path,
        "--data.name=imagefolder",
        f"--data.path={folder}",
        f"--data.loader={loader}",
        "--data.image_size=16",
        "--data.workers=0",
        "--train.batch_size=8",
        "--train.max_steps=2",
        "--train.knn_every=0",
    )
    assert main(["pretrain", "--quiet", "--no-eval", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    write_image_folder(tmp_path / "images", 3, {"train": 13, "test": 4}, (24, 24), seed=1)
    capsys.readouterr()
    assert main(["pretrain", "--quiet", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "data set changed" in err and "train: 24 images of 3 classes then, 33 of 3 now" in err
    assert "--resume continues" not in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--quiet", str(run)]) == 2
    assert "data set changed" in capsys.readouterr().err


def test_a_run_stopped_by_max_steps_and_resumed_can_be_evaluated(tmp_path):
    # issue 18.7: resume may change train.max_steps, evaluate compared the whole config
    args = tiny_run_args(tmp_path, "--train.epochs=1", "--train.knn_every=0")
    assert main(["pretrain", "--quiet", "--no-eval", "--train.max_steps=3", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (
        main(["pretrain", "--quiet", "--no-eval", "--resume", str(run), "--train.max_steps=5"]) == 0
    )
    argv = ["evaluate", "--quiet", str(run), "--eval.baselines=false", "--eval.linear_probe=false"]
    assert main(argv) == 0
    assert (
        json.loads((run / "eval-baselines=false_linear_probe=false.json").read_text())["steps"] == 5
    )


def test_evaluate_analyze_and_export_wait_for_a_run_that_trains(tmp_path, capsys):
    # issue 18.13: they read a checkpoint still moving and wrote a report of it
    from manifold_ssl.runinfo import run_lock

    args = tiny_run_args(tmp_path, "--train.max_steps=1", "--train.knn_every=0")
    assert main(["pretrain", "--quiet", "--no-eval", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    with run_lock(run):
        for argv in (
            ["evaluate", "--quiet", str(run)],
            ["analyze", "--quiet", str(run)],
            ["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "x.pt")],
        ):
            assert main(argv) == 2, argv
            assert "is in use by process" in capsys.readouterr().err
    assert not (run / "eval.json").exists() and not (run / "analysis").exists()
    assert not (tmp_path / "x.pt").exists()


def test_bad_devices_sizes_and_images_are_one_line_errors(tmp_path, capsys, monkeypatch):
    # issue 18.15: tracebacks (and a simulate-* directory per failed call)
    from manifold_ssl.data.synthetic import write_image_folder

    monkeypatch.chdir(tmp_path)
    for argv in (["simulate", "--device", "banana"], ["evaluate", "x", "--device", "gpu"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "argument --device: expected 'auto', 'cpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["simulate", "--device", "cuda", "--out", str(tmp_path / "sim")]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err
        assert not (tmp_path / "sim").exists()
    assert main(["pretrain", "--data.image_size=1"]) == 2
    assert "data.image_size must be >= 8 or null" in capsys.readouterr().err
    folder = write_image_folder(tmp_path / "images", 2, {"train": 6, "test": 2}, (24, 24))
    next(folder.glob("train/*/*.jpg")).write_bytes(b"not a jpeg")
    args = tiny_run_args(
        tmp_path,
        "--data.name=imagefolder",
        f"--data.path={folder}",
        "--data.workers=1",
        "--train.batch_size=4",
    )
    for loader in ("memory", "stream"):
        assert main(["pretrain", "--quiet", "--no-eval", f"--data.loader={loader}", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot decode image" in err, err


def test_caches_have_plain_names_and_an_edited_data_set_replaces_its_cache(tmp_path):
    # issue 18.22: cache files were named with a pattern's braces, and every edit of a data
    # set left its old decoded copy behind for good
    import webdataset as wds

    from manifold_ssl.data.datasets import load_dataset
    from manifold_ssl.data.files import index_shards
    from manifold_ssl.data.synthetic import write_image_folder

    folder = write_image_folder(tmp_path / "images", 2, {"train": 4, "test": 2}, (16, 16))
    root = tmp_path / "data"

    def caches() -> list[str]:
        return sorted(p.name for p in (root / "cache").rglob("*.pt"))

    load_dataset("imagefolder", "train", root, str(folder), size=16)
    first = caches()
    write_image_folder(folder, 2, {"train": 5, "test": 2}, (16, 16), seed=1)
    assert len(load_dataset("imagefolder", "train", root, str(folder), size=16)) == 10
    assert len(caches()) == len(first) and caches() != first  # replaced, not added
    shards = tmp_path / "shards"
    shards.mkdir()
    images = sorted((folder / "train").rglob("*.jpg"))
    for split in ("train", "test"):
        with wds.TarWriter(str(shards / f"{split}-000.tar")) as sink:
            for i, image in enumerate(images):
                sink.write({"__key__": f"s{i}", "jpg": image.read_bytes(), "cls": b"0"})
    pattern = str(shards / "{split}-{000..000}.tar")
    load_dataset("webdataset", "train", root, pattern, size=16)
    index_shards(pattern, "test", root)
    assert not any(c in name for name in caches() for c in "{}*?[]")
