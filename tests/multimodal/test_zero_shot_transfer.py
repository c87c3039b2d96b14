"""Zero-shot transfer of a multimodal run to another labelled data set (issue 21, item 4:
``eval.zero_shot_data``), prompted with the held-out templates ensembled."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_MULTIMODAL
from PIL import Image

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.datasets import load_dataset
from manifold_ssl.run import evaluate_run, pretrain
from manifold_ssl.run.evaluate import _channels

TINY = [*TINY_MULTIMODAL, "--train.epochs=1"]


def _digits_as_colour_folder(tmp_path):
    """The digits test images as RGB PNGs in class folders 0-9 (another data set's files,
    another loader, three channels)."""
    test = load_dataset("digits", "test", tmp_path / "data")
    folder = tmp_path / "digits-png"
    for i, (image, label) in enumerate(zip(test.images, test.labels, strict=True)):
        (folder / "test" / str(int(label))).mkdir(parents=True, exist_ok=True)
        (folder / "train" / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).convert("RGB").save(
            folder / "test" / str(int(label)) / f"{i}.png"
        )
        Image.fromarray(image[0].numpy()).convert("RGB").save(
            folder / "train" / str(int(label)) / f"{i}.png"
        )
    return folder


def test_transfer_to_the_same_images_from_other_files_equals_the_zero_shot_test(tmp_path):
    folder = _digits_as_colour_folder(tmp_path)
    cfg = apply_overrides(
        load_recipe("digits_clip"),
        [
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
            *TINY,
            "--eval.zero_shot_data=imagefolder",
            f"--eval.zero_shot_path={folder}",
        ],
    )
    result = pretrain(cfg, progress=False)
    results = evaluate_run(cfg, result.method, result.splits, result.run_dir, "cpu", {}, False)
    transfer, own = results["zero_shot_transfer"], results["zero_shot"]
    assert transfer["dataset"] == "imagefolder" and transfer["images"] == len(result.splits.test)
    assert transfer["chance"] == pytest.approx(0.1) and transfer["templates"] == own["templates"]
    # the same images, through PNG files, RGB and back to grey: the same accuracies
    assert transfer["zero_shot_test_accuracy"] == own["zero_shot_test_accuracy"]
    assert transfer["zero_shot_test_top5"] == own["zero_shot_test_top5"]
    assert (
        "zero-shot transfer to imagefolder (test, 360 images)"
        in (result.run_dir / "report.md").read_text()
    )
    # after the fact, from the command line, with the class words given
    words = "[zero, one, two, three, four, five, six, seven, eight, nine]"
    argv = ["evaluate", str(result.run_dir), "--eval.zero_shot_data=imagefolder"]
    argv += [f"--eval.zero_shot_path={folder}", f"--eval.zero_shot_class_names={words}"]
    assert main([*argv, "--quiet"]) == 0
    (saved,) = [p for p in result.run_dir.glob("eval-*.json")]
    row = json.loads(saved.read_text())["results"]["zero_shot_transfer"]
    assert row["zero_shot_test_accuracy"] == own["zero_shot_test_accuracy"]
    assert main([*argv[:-1], "--eval.zero_shot_class_names=[a, b]", "--quiet"]) == 2


def test_channels_convert_exactly_for_grey_stored_as_colour():
    grey = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(_channels(_channels(grey, 3), 1), grey)
    colour = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    colour[0, :, 0, 0] = torch.tensor([255, 0, 0])
    assert int(_channels(colour, 1)) == 76  # ITU-R 601 luma of pure red


def test_a_dataset_that_is_not_registered_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eval.zero_shot_data must be one of"):
        apply_overrides(load_recipe("digits_clip"), ["--eval.zero_shot_data=imagenet"])


def _caption_only_digits(tmp_path):
    """The digits training images as caption-only shards (PNG + every generated caption, no
    .cls), and the digits as a labelled class folder: a pretraining set without labels and
    another data set to evaluate on."""
    from manifold_ssl.data.captions import CAPTION_TEMPLATES, GeneratedCaptions, ImageAttributes
    from manifold_ssl.data.synthetic import write_caption_shards, write_class_folder

    train = load_dataset("digits", "train", tmp_path / "data")
    test = load_dataset("digits", "test", tmp_path / "data")
    made = GeneratedCaptions(train, ImageAttributes.fit(train.images, train.labels))
    n, t = len(made), len(CAPTION_TEMPLATES["grey"])
    captions = [made.text([i] * t, list(range(t))) for i in range(n)]
    pattern = write_caption_shards(tmp_path / "shards", train.images, captions, shards=3)
    folder = tmp_path / "folder"
    write_class_folder(folder, train.images, train.labels, train.classes, "train")
    write_class_folder(folder, test.images, test.labels, test.classes, "test")
    return pattern, folder


def test_caption_only_shards_pretrain_and_evaluate_on_another_data_set(tmp_path, capsys):
    from manifold_ssl.data.files import UNLABELLED, index_shards

    pattern, folder = _caption_only_digits(tmp_path)
    files = index_shards(pattern, "train", tmp_path / "data")
    assert files.classes == [UNLABELLED] and len(files) == 1437
    args = [
        "pretrain",
        "digits_clip",
        f"--data.root={tmp_path / 'data'}",
        f"--train.out_dir={tmp_path / 'runs'}",
        "--data.name=webdataset",
        f"--data.path={pattern}",
        "--text.captions=files",
        "--data.val_fraction=0.05",
        *TINY,
        "--eval.zero_shot_data=imagefolder",
        f"--eval.zero_shot_path={folder}",
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot transfer to imagefolder (test, 360 images): top-1" in out
    # issue 27, item 17d: no empty kNN/probe table, and what was evaluated instead
    assert "encoder |" not in out and "Protocols:" not in out
    assert "no kNN or linear-probe table: the run's data has one class; evaluated by:" in out
    (run,) = (tmp_path / "runs").iterdir()
    report = (run / "report.md").read_text()
    assert "| encoder |" not in report and "zero-shot transfer to imagefolder" in report
    results = json.loads((run / "eval.json").read_text())["results"]
    assert set(results) == {"zero_shot_transfer"}  # one class here: nothing else to measure
    assert results["zero_shot_transfer"]["chance"] == pytest.approx(0.1)
    # generated captions need classes to name (text.captions=auto reads the files: issue 27.4)
    generated = [*args[:6], "--text.captions=generated", *args[7:-3], "--no-eval", "--quiet"]
    assert main(generated) == 2
    assert "caption-only shards): give every image its <key>.txt caption" in (
        capsys.readouterr().err
    )
    # without a data set to transfer to, a one-class run is not evaluated
    assert main(["evaluate", str(run), "--eval.zero_shot_data=null", "--quiet"]) == 2
    assert "set eval.zero_shot_data" in capsys.readouterr().err


def test_a_shard_labelled_in_part_is_refused(tmp_path):
    import io
    import tarfile

    from manifold_ssl.data.files import index_shards

    with tarfile.open(tmp_path / "train-0.tar", "w") as tar:
        for name, data in (("a.png", _png()), ("a.cls", b"1"), ("b.png", _png())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="sample b of .* has no .cls label, but others have"):
        index_shards(str(tmp_path / "{split}-0.tar"), "train", tmp_path / "data")


def _png():
    import io

    out = io.BytesIO()
    Image.new("L", (4, 4)).save(out, "PNG")
    return out.getvalue()


def test_zero_shot_settings_are_checked_before_training(tmp_path, capsys):
    """Issue 27, item 12: every ``eval.zero_shot_*`` setting that can be checked is checked
    before the first step (no run directory is made); an evaluation error after training
    names the command that finishes the trained run's evaluation, which then does."""
    from manifold_ssl.data.synthetic import write_class_folder

    test = load_dataset("digits", "test", tmp_path / "data")
    folder = tmp_path / "folder"
    write_class_folder(folder, test.images, test.labels, test.classes, "train")
    write_class_folder(folder, test.images, test.labels, test.classes, "test")
    runs = tmp_path / "runs"
    base = ["pretrain", "digits_clip", f"--data.root={tmp_path / 'data'}"]
    base += [f"--train.out_dir={runs}", *TINY, "--train.batch_size=256", "--quiet"]
    base += ["--eval.zero_shot_data=imagefolder"]
    path = f"--eval.zero_shot_path={folder}"
    refused = [
        (["--eval.zero_shot_path=/no/such/folder"], "eval.zero_shot_path=/no/such/folder"),
        ([path, "--eval.zero_shot_split=val"], "eval.zero_shot_split=val"),
        (
            [path, "--eval.zero_shot_class_names=[a, b]"],
            "eval.zero_shot_class_names has 2 names, but imagefolder has 10 classes",
        ),
        ([], "imagefolder needs eval.zero_shot_path"),
    ]
    for extra, message in refused:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not runs.exists()  # refused before anything was written
    image_only = ["pretrain", "digits_mmcr", f"--data.root={tmp_path / 'data'}"]
    assert main([*image_only, "--eval.zero_shot_data=cifar10", "--quiet"]) == 2
    assert "the zero-shot transfer of a multimodal run" in capsys.readouterr().err
    assert main([*base[:-1], path]) == 2  # a path without zero_shot_data
    assert "eval.zero_shot_path is a setting of zero-shot transfer" in capsys.readouterr().err
    # an image that cannot be decoded is found when the evaluation reads it, after training
    bad = next((folder / "test" / test.classes[0]).iterdir())
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    assert main([*base, path]) == 2
    err = capsys.readouterr().err
    (run,) = runs.iterdir()
    assert f"finish its evaluation with manifold-ssl evaluate {run}" in err
    bad.write_bytes(good)
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert "zero-shot transfer to imagefolder (test, 360 images)" in capsys.readouterr().out
