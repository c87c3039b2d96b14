"""Where a multimodal run's captions come from (issue 27, item 4): ``text.captions: auto``
reads the data's ``<key>.txt`` captions when every training image has one, generates them
otherwise, and says which at start (``meta.json`` records it); the caption recipes take it."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import TINY_MULTIMODAL
from PIL import Image

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.run.build import caption_source, captions_of, splits_of

RECIPES = ["cifar10_clip", "cifar10_multimodal_mmcr", "digits_clip", "digits_multimodal_mmcr"]
COLOURS = ("red", "green", "blue")


def _png(pixels: torch.Tensor) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(out, format="PNG")
    return out.getvalue()


def _labelled_pairs(folder, per_split=(12, 6), captions=True):
    """``<key>.png + .txt + .cls`` shards (the README's "your own" data): three classes of
    flat colour images, each with its own caption. Returns the pattern and the captions of the
    training shard's images, by key."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    texts = {}
    for split, n in zip(("train", "test"), per_split, strict=True):
        with wds.TarWriter(str(folder / f"{split}-000000.tar")) as sink:
            for i in range(n):
                label = i % 3
                image = torch.zeros(3, 16, 16, dtype=torch.uint8)
                image[label] = 200 + i
                key = f"{split}{i:03d}"
                sample = {"__key__": key, "png": _png(image), "cls": str(label).encode()}
                if captions:
                    texts[key] = f"picture {i}: a {COLOURS[label]} square"
                    sample["txt"] = texts[key].encode()
                sink.write(sample)
    return str(folder / "{split}-000000.tar"), texts


def _cfg(recipe, tmp_path, pattern, *extra):
    return apply_overrides(
        load_recipe(recipe),
        [
            "--data.name=webdataset",
            f"--data.path={pattern}",
            f"--data.root={tmp_path / 'data'}",
            "--data.val_fraction=0.25",
            *extra,
        ],
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_caption_recipe_reads_the_captions_the_data_carry(tmp_path, recipe):
    pattern, texts = _labelled_pairs(tmp_path / "pairs")
    cfg = _cfg(recipe, tmp_path, pattern)
    source, line = caption_source(cfg)
    assert source == "files" and "one for each of the 9 training images" in line
    captions = captions_of(cfg, splits_of(cfg))
    read = {text for lines in captions.lines for text in lines}  # type: ignore[attr-defined]
    assert len(read) == 9 and read <= set(texts.values())


def test_auto_generates_where_captions_are_missing_and_counts_them(tmp_path):
    pattern, _ = _labelled_pairs(tmp_path / "none", captions=False)
    source, line = caption_source(_cfg("digits_clip", tmp_path, pattern))
    assert source == "generated" and "0 of the 9 training images have a <key>.txt caption" in line
    # some images with a caption, some without: generated, and the line counts them
    import tarfile

    pattern, _ = _labelled_pairs(tmp_path / "some")
    shard = tmp_path / "some" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name not in ("train000.txt", "train004.txt"):
                tar.addfile(member, io.BytesIO(data))
    cfg = _cfg("digits_clip", tmp_path, pattern)
    source, line = caption_source(cfg)
    assert source == "generated" and "7 of the 9 training images" in line
    # explicit settings stay explicit: files refuses the images without one, naming them
    with pytest.raises(ValueError, match=r"has no .*\.txt member \(and 1 more images\)"):
        captions_of(apply_overrides(cfg, ["--text.captions=files"]), splits_of(cfg))
    pattern, _ = _labelled_pairs(tmp_path / "all")
    explicit = _cfg("digits_clip", tmp_path, pattern, "--text.captions=generated")
    assert caption_source(explicit)[0] == "generated"
    # a data set without caption files
    digits = apply_overrides(load_recipe("digits_clip"), [f"--data.root={tmp_path / 'data'}"])
    assert caption_source(digits) == (
        "generated",
        "captions: generated from each image's class and pixels (text.captions=auto: digits "
        "has no caption files)",
    )


def test_a_run_prints_and_records_its_captions(tmp_path, capsys):
    pattern, _ = _labelled_pairs(tmp_path / "pairs")
    args = [
        "pretrain",
        "digits_clip",
        "--data.name=webdataset",
        f"--data.path={pattern}",
        f"--data.root={tmp_path / 'data'}",
        f"--train.out_dir={tmp_path / 'runs'}",
        "--data.val_fraction=0.25",
        *TINY_MULTIMODAL,
        "--train.max_steps=1",
        "--train.batch_size=8",
        "--text.class_names=[red, green, blue]",
        "--no-eval",
        "--quiet",
    ]
    assert main(args) == 0
    line = "captions: the data's <key>.txt files, one for each of the 9 training images"
    assert line in capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["captions"]["source"] == "files" and line in meta["captions"]["why"]


@pytest.fixture
def accept_generated_stl10(monkeypatch):
    """torchvision checks STL-10's files against the real ones' MD5 sums; the generated copy
    has the real layout, not the real bytes, so only that check is lifted."""
    import os

    import torchvision.datasets.stl10 as stl10

    monkeypatch.setattr(stl10, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_the_readmes_caption_only_command_runs_as_written(
    tmp_path, monkeypatch, capsys, accept_generated_stl10
):
    """The README's caption-only pretraining, copied as written (tiny settings added): its
    ``<key>.jpg + <key>.txt`` shards read, zero-shot transfer to STL-10 (a generated copy)."""
    from manifold_ssl.data.synthetic import write_caption_shards, write_stl10

    monkeypatch.chdir(tmp_path)
    images = torch.randint(0, 256, (40, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    captions = [[f"a {COLOURS[i % 3]} picture", f"picture {i}"] for i in range(40)]
    write_caption_shards("pairs", images.to(torch.uint8), captions, shards=2)
    write_stl10("data", per_split=4)
    readme = "pretrain cifar10_clip --data.name=webdataset --data.path=pairs/{split}-*.tar"
    readme += " --eval.zero_shot_data=stl10 --train.knn_every=0"
    tiny = [*TINY_MULTIMODAL, "--train.epochs=1", "--quiet"]
    assert main([*readme.split(), *tiny]) == 0
    out = capsys.readouterr().out
    assert "captions: the data's <key>.txt files, one for each of the 36 training images" in out
    assert "zero-shot transfer to stl10 (test, " in out
    (run,) = (tmp_path / "runs").iterdir()
    results = json.loads((run / "eval.json").read_text())["results"]
    assert set(results) == {"zero_shot_transfer"}
