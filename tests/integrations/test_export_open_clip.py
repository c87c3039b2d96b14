"""``export --format open_clip`` (issue 21, item 4): a multimodal run's image and text towers
as an OpenCLIP model that ``open_clip.create_model_and_transforms(name, pretrained=FILE)``
loads, giving the run's own embeddings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, config_to_dict, load_recipe
from manifold_ssl.export import export_backbone
from manifold_ssl.models.text import build_tokenizer
from manifold_ssl.run import build_method_for
from manifold_ssl.training.checkpoint import save_checkpoint

open_clip = pytest.importorskip("open_clip")


def _checkpoint(tmp_path, method, backbone="timm:resnet10t", projector="16"):
    """A checkpoint as a run writes it (config, model) of a multimodal method, its weights
    moved off their initialisation so that nothing matches by chance."""
    cfg = apply_overrides(
        load_recipe("digits_clip" if method == "clip" else "digits_multimodal_mmcr"),
        [
            f"--model.backbone={backbone}",
            "--model.width=null",
            "--model.small_images=false",
            f"--model.projector={projector}",
            "--text.width=32",
            "--text.layers=1",
            "--text.heads=2",
            "--text.context_length=16",
            "--data.image_size=32",
            f"--data.root={tmp_path / 'data'}",  # the export measures the view on it
        ],
    )
    model = build_method_for(cfg, 3, image_size=32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        if model.logit_scale is not None:
            model.logit_scale.fill_(2.5)
    path = tmp_path / f"{method}.pt"
    save_checkpoint({"config": config_to_dict(cfg), "model": model.state_dict(), "step": 7}, path)
    return cfg, model.eval(), path


@pytest.mark.parametrize("method", ["clip", "multimodal_mmcr"])
def test_open_clip_loads_the_towers_and_gives_the_runs_embeddings(tmp_path, method):
    cfg, model, ckpt = _checkpoint(tmp_path, method)
    out = export_backbone(ckpt, "open_clip", tmp_path / "mssl-test.pt")
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    assert spec["model_config"] == str(tmp_path / "mssl-test.json")
    exec(spec["load"], namespace := {})  # the snippet the export prints, as a user runs it
    loaded, tokenizer = namespace["model"].eval(), namespace["tokenizer"]
    images = torch.randn(4, 3, 32, 32)
    captions = ["a photo of a cat", "a thick, upright handwritten three", "", "x " * 40]
    tokens = build_tokenizer(cfg.text.context_length)(captions)
    assert torch.equal(tokenizer(captions), tokens)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_image(images, normalize=True), model.encode_image(images)
        )
        torch.testing.assert_close(
            loaded.encode_text(tokens, normalize=True), model.encode_text(tokens)
        )
    scale = float(model.logit_scale.detach()) if method == "clip" else math.log(1 / 0.07)
    assert float(loaded.logit_scale.detach()) == pytest.approx(scale)


def test_runs_open_clip_cannot_build_are_refused_with_the_reason(tmp_path, capsys):
    _, _, mlp = _checkpoint(tmp_path, "clip", projector="32-16")
    with pytest.raises(ValueError, match="model.projector must be one layer"):
        export_backbone(mlp, "open_clip", tmp_path / "a.pt")
    _, _, own = _checkpoint(tmp_path, "clip", backbone="convnet")
    with pytest.raises(ValueError, match="must be timm:<name>"):
        export_backbone(own, "open_clip", tmp_path / "b.pt")
    image_only = load_recipe("digits_mmcr")
    path = tmp_path / "mmcr.pt"
    state = build_method_for(image_only, 1).state_dict()
    save_checkpoint({"config": config_to_dict(image_only), "model": state}, path)
    assert (
        main(["export", str(path), "--format", "open_clip", "--out", str(tmp_path / "c.pt")]) == 2
    )
    assert "writes a multimodal run" in capsys.readouterr().err


def _digits_folder(tmp_path):
    """The digits as a labelled image folder of grey PNGs (read as RGB): 8×8 images that a
    run reads at another size, so that the resize is part of the view."""
    from manifold_ssl.data.datasets import load_dataset
    from manifold_ssl.data.synthetic import write_class_folder

    folder = tmp_path / "folder"
    for split in ("train", "test"):
        data = load_dataset("digits", split, tmp_path / "data")
        write_class_folder(folder, data.images, data.labels, data.classes, split)
    return folder


def _open_clip_zero_shot(spec, folder, words, templates):
    """Zero-shot on ``folder``'s test images as an OpenCLIP user runs it: the export's load
    lines as printed, images through the ``preprocess`` they build, prompts ensembled."""
    import torch.nn.functional as F
    from PIL import Image

    from manifold_ssl.data.captions import fill

    exec(spec["load"], namespace := {})
    model, preprocess = namespace["model"].eval(), namespace["preprocess"]
    tokenizer = namespace["tokenizer"]
    classes = sorted(p.name for p in (folder / "test").iterdir())
    files = [(f, c) for c, n in enumerate(classes) for f in sorted((folder / "test" / n).iterdir())]
    with torch.no_grad():
        weights = torch.stack(
            [
                F.normalize(
                    model.encode_text(
                        tokenizer([fill(t, label=w) for t in templates]), normalize=True
                    ).mean(0),
                    dim=-1,
                )
                for w in words
            ]
        )
        images = torch.stack([preprocess(Image.open(f)) for f, _ in files])
        feats = model.encode_image(images, normalize=True)
    labels = torch.tensor([c for _, c in files])
    return float(((feats @ weights.T).argmax(1) == labels).float().mean()), feats, labels


@pytest.mark.parametrize("crop_fraction", [1.0, 0.8])
def test_open_clip_zero_shot_equals_the_runs_own_on_the_same_images(tmp_path, crop_fraction):
    """Issue 27, item 3: the load lines' ``preprocess`` is the run's view (size, crop,
    interpolation, statistics), so zero-shot in OpenCLIP equals manifold-ssl's own on the
    same test images: the same top-1 and the same features; also for a checkpoint that does
    not record the view (measured on the run's data)."""
    import torch.nn.functional as F
    from helpers import TINY_MULTIMODAL

    from manifold_ssl.evaluation.features import extract_features
    from manifold_ssl.run import pretrain
    from manifold_ssl.run.build import eval_preprocess, splits_of
    from manifold_ssl.run.evaluate import zero_shot
    from manifold_ssl.run.record import RunDir

    folder = _digits_folder(tmp_path)
    cfg = apply_overrides(
        load_recipe("digits_clip"),
        [
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
            "--data.name=imagefolder",
            f"--data.path={folder}",
            "--data.loader=memory",
            "--data.image_size=16",
            f"--data.crop_fraction={crop_fraction}",
            "--text.captions=generated",
            *TINY_MULTIMODAL,
            "--train.epochs=1",
            "--train.max_steps=4",
            "--model.backbone=timm:resnet10t",
            "--model.width=null",
            "--model.small_images=false",
        ],
    )
    result = pretrain(cfg, progress=False)
    method, splits = result.method.eval(), result.splits
    own = zero_shot(cfg, method, splits, "cpu", ("test",))["zero_shot_test_accuracy"]
    out = export_backbone(result.run_dir, "open_clip", tmp_path / "mssl-clip.pt")
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    mean, std = splits.normalisation
    assert spec["preprocess_cfg"]["mean"] == list(mean) and spec["crop_fraction"] == crop_fraction
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    templates = ["a photo of the {label}.", "an image showing a {label}.", "this is a {label}."]
    assert splits.channels == 3  # grey PNGs read as RGB, as OpenCLIP reads them
    top1, feats, labels = _open_clip_zero_shot(spec, folder, words, templates)
    assert torch.equal(labels, splits.test.labels)
    tower = torch.nn.Sequential(method.backbone, method.projector)
    mine = F.normalize(extract_features(tower, splits.test, mean, std), dim=-1)
    torch.testing.assert_close(feats, mine, atol=1e-5, rtol=1e-5)
    assert top1 == pytest.approx(own, abs=1e-6)
    # a checkpoint without the recorded view: measured on the run's data, the same
    state = torch.load(RunDir(result.run_dir).checkpoint_file(), weights_only=False)
    assert state["preprocess"] == eval_preprocess(cfg, splits_of(cfg))
    del state["preprocess"]
    save_checkpoint(state, tmp_path / "old.pt")
    old = export_backbone(tmp_path / "old.pt", "open_clip", tmp_path / "mssl-old.pt")
    assert (
        json.loads(old.with_name(old.name + ".json").read_text())["preprocess_cfg"]
        == (spec["preprocess_cfg"])
    )
