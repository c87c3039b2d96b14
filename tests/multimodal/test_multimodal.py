"""Multimodal pretraining: captions measured from pixels or read from files, (views, tokens)
batches, the image-text methods in the training loop (resume, DDP), zero-shot evaluation, and
the batch-size sweep's figures (Schaeffer et al. Sec. 7, Figs. 5-7)."""

from __future__ import annotations

import json
import os
import tarfile

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MULTIMODAL, one_and_two_process_losses
from torch import nn

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.captions import (
    CAPTION_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    FileCaptions,
    GeneratedCaptions,
    ImageAttributes,
    class_words,
    fill,
    read_captions,
)
from manifold_ssl.data.datasets import ImageTensors
from manifold_ssl.data.files import index_images, index_shards
from manifold_ssl.data.pairs import CaptionBatches
from manifold_ssl.data.stream import Layout, TensorBatches
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.data.views import MultiViewAugment, preset
from manifold_ssl.evaluation.zeroshot import class_text_embeddings, zero_shot_accuracy
from manifold_ssl.losses import clip_loss, multimodal_mmcr_loss
from manifold_ssl.methods import MULTIMODAL, MultimodalMethod
from manifold_ssl.models.text import build_tokenizer
from manifold_ssl.run import build_method_for, evaluate_run, pretrain
from manifold_ssl.training.metrics import read_metrics

TINY = TINY_MULTIMODAL


def _cfg(tmp_path, method="multimodal_mmcr", *overrides):
    recipe = "digits_multimodal_mmcr" if method == "multimodal_mmcr" else "digits_clip"
    return apply_overrides(
        load_recipe(recipe),
        [
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
            *TINY,
            "--train.epochs=2",
            *overrides,
        ],
    )


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


# --------------------------------------------------------------------------- captions
def _strokes(thickness: int, shear: int, label: int = 0) -> torch.Tensor:
    """A 12×12 grey stroke: a vertical bar ``thickness`` pixels wide, its top shifted ``shear``
    pixels to the right of its bottom."""
    img = torch.zeros(1, 12, 12, dtype=torch.uint8)
    for row in range(2, 10):
        offset = round(shear * (9 - row) / 7)  # row 2 (top) shifted most
        col = 5 + offset
        img[0, row, col : col + thickness] = 255
    return img


def test_grey_attributes_are_measured_from_the_strokes():
    thin, thick = _strokes(1, 0), _strokes(3, 0)
    right, left = _strokes(2, 3), _strokes(2, -3)
    upright = _strokes(2, 0)
    images = torch.stack([thin, thick, right, left, upright] * 3)
    labels = torch.zeros(len(images), dtype=torch.long)
    attrs = ImageAttributes.fit(images, labels)
    words = attrs.describe(torch.stack([thin, thick, right, left, upright]), labels[:5])
    assert words["thickness"][0] == "thin" and words["thickness"][1] == "thick"
    assert words["slant"][2] == "right-leaning" and words["slant"][3] == "left-leaning"
    assert words["slant"][4] == "upright"


def test_colour_attributes_name_the_dominant_colour_and_brightness():
    def solid(rgb, fraction=1.0):
        img = torch.zeros(3, 8, 8, dtype=torch.uint8)
        rows = max(1, round(8 * fraction))
        img[:, :rows] = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)
        return img

    names = {
        "red": (220, 20, 20),
        "yellow": (230, 220, 30),
        "green": (30, 200, 40),
        "blue": (30, 40, 220),
        "purple": (150, 40, 200),
        "grey": (128, 128, 128),
    }
    images = torch.stack([solid(rgb) for rgb in names.values()])
    labels = torch.zeros(len(images), dtype=torch.long)
    words = ImageAttributes.fit(images, labels).describe(images, labels)
    assert words["colour"] == list(names)
    lit = torch.stack([solid((40, 40, 40)), solid((120, 120, 120)), solid((250, 250, 250))])
    bright = ImageAttributes.fit(lit, labels[:3]).describe(lit, labels[:3])["brightness"]
    assert bright == ["dark", "medium-lit", "bright"]
    # a few colourful pixels on grey do not make a colour
    speck = solid((128, 128, 128))
    speck[:, 0, 0] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    assert ImageAttributes.fit(speck[None], labels[:1]).describe(speck[None], labels[:1])[
        "colour"
    ] == ["grey"]


def test_generated_captions_name_class_and_attributes_in_every_template():
    images = torch.stack([_strokes(1, 0), _strokes(3, 3), _strokes(2, -3)] * 2)
    labels = torch.tensor([7, 7, 7, 1, 1, 1])
    split = ImageTensors(images, labels, [str(i) for i in range(10)])
    captions = GeneratedCaptions(split, ImageAttributes.fit(images, labels))
    templates = CAPTION_TEMPLATES["grey"]
    texts = captions.text([1] * len(templates), list(range(len(templates))))
    assert len(set(texts)) == len(templates)
    assert all("seven" in t and ("thick" in t or "right-leaning" in t) for t in texts)
    assert captions.text([1, 4], [0, 0]) == [
        "a thick, right-leaning handwritten seven",
        "a thick, right-leaning handwritten one",
    ]
    assert class_words(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])[3] == "three"
    assert fill("an image of a {label}.", label="eight") == "an image of an eight."
    assert fill("an image of a {label}.", label="one") == "an image of a one."
    assert fill("A {colour} {label}", colour="orange", label="cat") == "An orange cat"
    # zero-shot prompts are held out: none is a training template
    for kind in ("grey", "colour"):
        assert not set(ZERO_SHOT_TEMPLATES[kind]) & set(CAPTION_TEMPLATES[kind])


def test_file_captions_from_folders_archives_and_shards(tmp_path):
    import webdataset as wds

    folder = write_image_folder(tmp_path / "set", 2, {"train": 3, "test": 1}, (12, 16))
    files = index_images(folder, "train", tmp_path / "d")
    for i in range(len(files)):
        path = os.fsdecode(files.names[i])
        with open(path.rsplit(".", 1)[0] + ".txt", "w") as f:
            f.write(f"caption {i} of {files.classes[int(files.labels[i])]}\n\nsecond line {i}\n")
    plain = read_captions(files)
    assert plain.lines[4] == ["caption 4 of class001", "second line 4"]
    assert plain.text([4, 4, 0], [0, 3, 2]) == [
        "caption 4 of class001",
        "second line 4",
        "caption 0 of class000",
    ]
    archive = tmp_path / "set.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="set")
    assert read_captions(index_images(archive, "train", tmp_path / "d")).lines == plain.lines
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "train-000.tar")) as sink:
        for i in range(len(files)):
            caption = "\n".join(plain.lines[i]).encode()
            sink.write({"__key__": f"k{i:03d}", "jpg": files.read(i), "cls": b"0", "txt": caption})
    shards = index_shards(str(tmp_path / "shards" / "{split}-000.tar"), "train", tmp_path)
    assert read_captions(shards).lines == plain.lines
    os.remove(os.fsdecode(files.names[2]).rsplit(".", 1)[0] + ".txt")
    with pytest.raises(ValueError, match=r"has no .*\.txt"):
        read_captions(files)


# --------------------------------------------------------------------------- batches
def _pair_batches(rank: int, world: int, seed: int = 3) -> CaptionBatches:
    images = torch.randint(
        0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    captions = FileCaptions([[f"image {i} a", f"image {i} b", f"image {i} c"] for i in range(40)])
    layout = Layout(8, rank, world, seed)
    inner = TensorBatches(images, MultiViewAugment(preset("clip"), 1), layout)
    return CaptionBatches(inner, captions, build_tokenizer(8), layout)


def test_caption_batches_slice_the_global_batch_and_resume_exactly():
    one = _pair_batches(0, 1)
    one.start_epoch(0, 0)
    views, tokens = one.next_views()
    assert views.shape == (8, 1, 1, 8, 8) and tokens.shape == (8, 8)
    assert all(
        c.startswith(f"image {i} ") for i, c in zip(one.last_index, one.last_captions, strict=True)
    )
    ranks = [_pair_batches(r, 2) for r in range(2)]
    parts = []
    for r in ranks:
        r.start_epoch(0, 0)
        parts.append(r.next_views())
    assert torch.equal(torch.cat([p[1] for p in parts]), tokens)
    # the memory loader's stateful generators are the resume state; the choices are derived
    state = one.state_dict()
    expected = one.next_views()
    again = _pair_batches(0, 1)
    again.load_state_dict(state)
    again.start_epoch(0, 1)
    got = again.next_views()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(ValueError, match="every image needs its caption"):
        CaptionBatches(one.images, FileCaptions([["x"]]), build_tokenizer(8), Layout(8))


# --------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name", sorted(MULTIMODAL))
def test_every_parameter_gets_a_gradient_and_the_loss_is_the_objective(tmp_path, name):
    cfg = _cfg(tmp_path, name)
    method = build_method_for(cfg, 1, image_size=8)
    assert isinstance(method, MultimodalMethod)
    views = torch.randn(6, 1, 1, 8, 8)
    tokens = build_tokenizer(16)([f"a digit number {i}" for i in range(6)])
    loss, terms, z = method((views, tokens))
    loss.backward()
    for pname, p in method.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert z.shape == (6, 2, 16) and not z.requires_grad
    with torch.no_grad():  # the embeddings zero-shot evaluation uses are the trained ones
        assert torch.allclose(method.encode_image(views[:, 0]), F.normalize(z[:, 0], dim=-1))
        assert torch.allclose(method.encode_text(tokens), F.normalize(z[:, 1], dim=-1))
    with torch.no_grad():
        image, text = z[:, 0], z[:, 1]
        if name == "clip":
            assert method.logit_scale is not None and method.logit_scale.grad.abs() > 0
            assert float(terms["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)
            expected = clip_loss(image, text, 1 / 0.07)
        else:
            expected = multimodal_mmcr_loss(image, text)
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="views, tokens"):
        method(views)


def test_clip_scale_is_clamped_after_each_step(tmp_path):
    method = build_method_for(_cfg(tmp_path, "clip"), 1, image_size=8)
    assert isinstance(method, MultimodalMethod) and method.logit_scale is not None
    with torch.no_grad():
        method.logit_scale.fill_(7.0)
    method.update_target(0, 10)
    assert float(method.logit_scale.detach().exp()) == pytest.approx(100.0)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="views.num_views to 1"):
        _cfg(tmp_path, "clip", "--views.num_views=2")
    with pytest.raises(ValueError, match="views.num_views >= 2"):
        apply_overrides(load_recipe("digits_mmcr"), ["--views.num_views=1"])
    with pytest.raises(ValueError, match=r"text.zero_shot_templates must be .*\{label\}"):
        _cfg(tmp_path, "clip", "--text.zero_shot_templates=[a photo]")
    with pytest.raises(ValueError, match="divisible by text.heads"):
        _cfg(tmp_path, "clip", "--text.width=10", "--text.heads=4")
    with pytest.raises(ValueError, match="probes"):
        _cfg(tmp_path, "clip", "--probes.every_steps=5")


def test_fig7_diagnostics_of_the_batch_centroids():
    from manifold_ssl.training.loop import _batch_metrics

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 2, 8, generator=gen, dtype=torch.float64)
    m = _batch_metrics(z)
    u, v = F.normalize(z[:, 0], dim=-1), F.normalize(z[:, 1], dim=-1)
    # 1 − mean ‖(u + v)/2‖² = (1 − mean u·v) / 2
    assert m["centroid_norm_complement"] == pytest.approx(float(1 - (u * v).sum(-1).mean()) / 2)
    same = _batch_metrics(torch.stack([z[:, 0], 3 * z[:, 0]], dim=1))
    assert same["centroid_norm_complement"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- zero-shot
def test_zero_shot_is_the_argmax_over_prompt_ensembles():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 3, (30,), generator=gen)
    split = ImageTensors(images, labels, ["a", "b", "c"])
    tower = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    vocab = {"a": 0, "b": 1, "c": 2}
    table = torch.randn(3, 2, 5, generator=gen)  # class x template embeddings

    def tokenize(prompts):
        return torch.tensor([[vocab[p.split()[-1]], int(p.startswith("two"))] for p in prompts])

    def encode_text(tokens):
        return table[tokens[:, 0], tokens[:, 1]] * 3.0  # unnormalised

    weights = class_text_embeddings(
        encode_text, tokenize, ["a", "b", "c"], ["one {label}", "two {label}"]
    )
    expected_w = F.normalize(F.normalize(table, dim=-1).mean(1), dim=-1)
    assert torch.allclose(weights, expected_w, atol=1e-6)
    acc = zero_shot_accuracy(tower, weights, split, (0.5,), (0.25,), top=(1, 2))
    x = (images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        pred = (F.normalize(tower(x), dim=-1) @ expected_w.T).argmax(1)
    assert acc[1] == pytest.approx(float((pred == labels).float().mean()))
    assert acc[1] <= acc[2] <= 1.0


# --------------------------------------------------------------------------- training
def test_digits_captions_train_to_zero_shot_far_above_chance(tmp_path):
    cfg = _cfg(
        tmp_path,
        "clip",
        "--model.width=16",
        "--model.projector=32",
        "--text.width=32",
        "--train.epochs=3",
    )
    result = pretrain(cfg, progress=False)
    records = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert records[-1]["loss"] < records[0]["loss"]
    for r in records:  # 1 − mean ‖(u + v)/2‖² = (1 − mean u·v) / 2 lies in [0, 1]
        assert 0 <= r["centroid_norm_complement"] <= 1
    results = evaluate_run(
        cfg, result.method, result.splits, result.run_dir, "cpu", {}, progress=False
    )
    zs = results["zero_shot"]
    assert zs["chance"] == pytest.approx(0.1)
    assert zs["zero_shot_test_accuracy"] > 0.5  # chance is 0.1
    saved = json.loads((result.run_dir / "eval.json").read_text())["results"]["zero_shot"]
    assert saved["templates"] == list(ZERO_SHOT_TEMPLATES["grey"])
    assert "zero-shot top-1" in (result.run_dir / "report.md").read_text()


@pytest.mark.parametrize("name", sorted(MULTIMODAL))
def test_resume_continues_exactly(tmp_path, name):
    full = pretrain(_cfg(tmp_path, name, "--train.max_steps=8"), progress=False)
    stopped = pretrain(_cfg(tmp_path, name, "--train.max_steps=5"), progress=False)
    resumed = pretrain(
        _cfg(tmp_path, name, "--train.max_steps=8"), resume=stopped.run_dir, progress=False
    )
    assert resumed.step == full.step == 8
    a, b = _losses(full.run_dir), _losses(stopped.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_image_folder_with_caption_files_trains_and_prompts_its_class_names(tmp_path):
    folder = write_image_folder(tmp_path / "set", 3, {"train": 12, "test": 4}, (20, 32))
    for txt_of in folder.glob("*/*/*.jpg"):
        colour = {"class000": "red", "class001": "green", "class002": "blue"}[txt_of.parent.name]
        txt_of.with_suffix(".txt").write_text(f"a {colour} square\na {colour} thing\n")
    cfg = _cfg(
        tmp_path,
        "clip",
        "--data.name=imagefolder",
        f"--data.path={folder}",
        "--data.loader=stream",
        "--text.captions=auto",
        "--data.image_size=16",
        "--data.workers=0",
        "--data.val_fraction=0.25",
        "--train.batch_size=9",
        "--train.max_steps=3",
        '--text.zero_shot_templates=["a photo of {label}"]',
    )
    result = pretrain(cfg, progress=False)
    assert result.step == 3
    results = evaluate_run(
        cfg, result.method, result.splits, result.run_dir, "cpu", {}, progress=False
    )
    assert results["zero_shot"]["templates"] == ["a photo of {label}"]
    assert 0 <= results["zero_shot"]["zero_shot_test_accuracy"] <= 1


@pytest.mark.parametrize("name", sorted(MULTIMODAL))
def test_two_process_ddp_equals_one_process(tmp_path, name):
    cfg = _cfg(tmp_path, name, "--train.max_steps=5", "--model.sync_bn=true")
    a, b = one_and_two_process_losses(cfg, tmp_path)
    assert sorted(a) == sorted(b) == list(range(1, 6))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


# --------------------------------------------------------------------------- sweep
def test_recipe_axis_and_zero_shot_figures(tmp_path):
    from manifold_ssl.experiments.plots import plot_sweep, zero_shot_tables
    from manifold_ssl.experiments.sweep import expand, load_spec

    trials = expand(load_spec("digits_multimodal_batch"))
    lrs = {(t.point["recipe"], t.cfg.method.name, t.cfg.optim.lr) for t in trials}
    assert lrs == {
        ("digits_multimodal_mmcr", "multimodal_mmcr", 1e-4),
        ("digits_clip", "clip", 1e-3),
    }
    assert {t.cfg.train.batch_size for t in trials} >= {32, 64, 128}  # crosses N = D = 64
    rows = []
    for method, base in (("multimodal_mmcr", 0.5), ("clip", 0.6)):
        for p in (16, 64, 256):
            for seed in (0, 1):
                rows.append(
                    {
                        "status": "done",
                        "method": method,
                        "P": p,
                        "D": 64,
                        "seed": seed,
                        "zero_shot_test_accuracy": base + 0.1 * seed,
                        "centroid_norm_complement": 0.2,
                        "percent_error": 0.3,
                    }
                )
    tables = zero_shot_tables(rows)
    assert tables["clip D=64"]["zero_shot_test_accuracy"] == pytest.approx([0.65] * 3)
    assert tables["clip D=64"]["zero_shot_test_accuracy_std"] == pytest.approx([0.05] * 3)
    assert tables["multimodal_mmcr D=64"]["seeds"] == [2, 2, 2]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    written = {p.name for p in plot_sweep(tmp_path)}
    assert written == {"zero_shot.json", "fig5_zero_shot.png", "fig7_diagnostics.png"}


def test_class_ids_with_caption_files_need_class_names_before_training(tmp_path, capsys):
    # issue 18.4: WebDataset .cls ids prompted as words ("a photo of the 0.") gave chance level
    from manifold_ssl.cli import main
    from manifold_ssl.run.build import zero_shot_words

    folder = write_image_folder(tmp_path / "set", 3, {"train": 12, "test": 4}, (20, 32))
    colours = ("red", "green", "blue")
    for split in ("train", "test"):
        for i in range(3):
            (folder / split / f"class00{i}").rename(folder / split / str(i))
    for jpg in folder.glob("*/*/*.jpg"):
        jpg.with_suffix(".txt").write_text(f"a {colours[int(jpg.parent.name)]} square\n")
    args = [
        "pretrain",
        "digits_clip",
        "--quiet",
        *TINY,
        f"--data.root={tmp_path / 'data'}",
        f"--train.out_dir={tmp_path / 'runs'}",
        "--data.name=imagefolder",
        f"--data.path={folder}",
        "--data.loader=stream",
        "--text.captions=files",
        "--data.image_size=16",
        "--data.workers=0",
        "--train.batch_size=9",
        "--train.epochs=1",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "set text.class_names" in err and "ids 0, 1, 2" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    assert main([*args, "--text.class_names=[red, green]"]) == 2
    assert "text.class_names has 2 names, but the data set has 3 classes" in capsys.readouterr().err
    assert main([*args, "--text.class_names=[red, green, blue]"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "eval.json").read_text())["results"]["zero_shot"]["chance"] > 0
    cfg = apply_overrides(load_recipe("digits_clip"), ["--text.class_names=[red, green, blue]"])
    assert zero_shot_words(cfg, ["0", "1", "2"]) == list(colours)
    # generated captions are made from the same names, so ids prompt them (the digits)
    assert zero_shot_words(load_recipe("digits_clip"), [str(i) for i in range(10)])[0] == "zero"
