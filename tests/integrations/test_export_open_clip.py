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
