"""Backbones from torchvision and timm: gradients to every parameter, training on CIFAR-shaped
data, and ``export`` round trips into the libraries' own models."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from helpers import tiny_run_args

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.export import export_state
from manifold_ssl.methods import build_method
from manifold_ssl.models import build_backbone, cifar_stem

# (backbone, constructor keywords): a ResNet from each library and a small-image timm ViT
ECOSYSTEM = [
    ("torchvision:resnet18", {}),
    ("timm:resnet18", {}),
    ("timm:vit_tiny_patch16_224", {"patch_size": 4, "depth": 2}),
]


@pytest.mark.parametrize(("name", "kwargs"), ECOSYSTEM, ids=[n for n, _ in ECOSYSTEM])
def test_ecosystem_backbones_give_every_parameter_a_gradient(name, kwargs):
    torch.manual_seed(0)
    net = build_backbone(name, 3, small_images=True, image_size=16, kwargs=kwargs)
    for m in net.modules():  # timm zero-initialises each block's last BN, which stops gradients
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    x = torch.randn(4, 3, 16, 16)
    out = net(x)
    assert out.shape == (4, net.out_dim) and torch.isfinite(out).all()
    (out.square().mean() + out.mean()).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    if "resnet" in name:  # the CIFAR stem: 3x3 stride 1, no max-pool
        assert net.model.conv1.kernel_size == (3, 3) and net.model.conv1.stride == (1, 1)
        assert isinstance(net.model.maxpool, torch.nn.Identity)


def test_ecosystem_backbones_reject_what_they_cannot_do():
    with pytest.raises(ValueError, match="has no model 'resnet7'"):
        build_backbone("torchvision:resnet7", 3)
    with pytest.raises(ValueError, match="model.width"):
        build_backbone("timm:resnet18", 3, width=16)
    with pytest.raises(ValueError, match="CIFAR stem"):
        cifar_stem(torchvision.models.mobilenet_v3_small())
    with pytest.raises(ValueError, match="model.backbone must be"):
        apply_overrides(load_recipe("digits_mmcr"), ["--model.backbone=timm:not_a_model"])


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_like")
    return write_image_folder(root / "images", 3, {"train": 12, "test": 4}, (32, 32))


def _features(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(("name", "kwargs"), ECOSYSTEM, ids=[n for n, _ in ECOSYSTEM])
def test_pretrain_then_export_round_trips_into_the_library(tmp_path, cifar_like, name, kwargs):
    args = tiny_run_args(
        tmp_path,
        "--data.name=imagefolder",
        f"--data.path={cifar_like}",
        "--views.preset=cifar",
        f"--model.backbone={name}",
        f"--model.kwargs={json.dumps(kwargs)}",
        "--model.width=null",
        "--train.batch_size=8",
        "--train.max_steps=2",
        "--train.knn_every=0",
    )
    assert main(["pretrain", "--quiet", "--no-eval", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ours = build_backbone(name, 3, True, image_size=32, kwargs=kwargs)
    ours.load_state_dict({k[9:]: v for k, v in state["model"].items() if k.startswith("backbone.")})
    x = torch.randn(3, 3, 32, 32)
    expected = _features(ours, x)
    library = name.partition(":")[0]
    formats = ["torchvision", "timm"] if "resnet" in name else [library]
    for fmt in formats:
        out = tmp_path / f"{fmt}.pt"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        spec = json.loads((tmp_path / f"{fmt}.pt.json").read_text())
        assert spec["library"] == fmt and spec["cifar_stem"] == ("resnet" in name)
        # issue 18.11: the ViT's img_size was missing from FILE.json; its snippet, run as it
        # is, builds and loads the model
        namespace: dict = {}
        exec(spec["load"], namespace)
        model, missing, unexpected = (namespace[k] for k in ("model", "missing", "unexpected"))
        classifier = {"fc.weight", "fc.bias"} if "resnet" in name else {"head.weight", "head.bias"}
        assert set(missing) == classifier and not unexpected
        model.reset_classifier(0) if fmt == "timm" else setattr(model, "fc", torch.nn.Identity())
        torch.testing.assert_close(_features(model, x), expected, rtol=1e-4, atol=1e-5)


def test_a_width_64_resnet_written_here_exports_to_torchvision():
    cfg = apply_overrides(
        load_recipe("digits_mmcr"), ["--model.backbone=resnet18", "--model.width=64"]
    )
    torch.manual_seed(0)
    method = build_method("mmcr", build_backbone("resnet18", 3, True, 64), "32-16")
    exported = export_state(cfg, method.state_dict(), "torchvision")["state_dict"]
    model = cifar_stem(torchvision.models.resnet18())
    missing, unexpected = model.load_state_dict(exported, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    model.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(
        _features(model, x), _features(method.backbone, x), rtol=1e-4, atol=1e-5
    )
    narrow = apply_overrides(cfg, ["--model.width=16"])
    with pytest.raises(ValueError, match="width 16 has no torchvision counterpart"):
        export_state(
            narrow,
            build_method("mmcr", build_backbone("resnet18", 3, True, 16), "32-16").state_dict(),
            "torchvision",
        )


def test_export_refuses_what_a_library_cannot_load(tmp_path):
    cfg = load_recipe("digits_mmcr")  # the ConvNet: no torchvision or timm counterpart
    method = build_method("mmcr", build_backbone("convnet", 1, width=4), "32-16")
    with pytest.raises(ValueError, match="cannot be written as torchvision weights"):
        export_state(cfg, method.state_dict(), "torchvision")
    own = export_state(cfg, method.state_dict(), "state_dict")["state_dict"]
    assert own.keys() == method.backbone.state_dict().keys()
    with pytest.raises(ValueError, match="--format must be one of"):
        export_state(cfg, method.state_dict(), "onnx")
    assert main(["export", str(tmp_path / "nowhere"), "--format", "timm", "--out", "x.pt"]) == 2


def test_export_never_replaces_what_is_there_unasked(tmp_path, capsys):
    # issue 18.12: --out replaced any path by rename (/dev/full as root), overwrote silently,
    # and an existing directory failed with "[Errno 21] Is a directory"
    args = tiny_run_args(tmp_path, "--train.max_steps=1", "--train.knn_every=0")
    assert main(["pretrain", "--quiet", "--no-eval", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    export = ["export", str(run), "--format", "state_dict", "--out"]
    out = tmp_path / "w.pt"
    assert main([*export, str(out)]) == 0
    first = out.read_bytes()
    spec = json.loads((tmp_path / "w.pt.json").read_text())
    namespace: dict = {}
    exec(spec["load"], namespace)  # the snippet imports what it uses
    assert namespace["state"].keys() == torch.load(out, weights_only=True).keys()
    assert main([*export, str(out)]) == 2
    assert "exists; choose another path or pass --overwrite" in capsys.readouterr().err
    assert main([*export, str(out), "--overwrite"]) == 0 and out.read_bytes() == first
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main([*export, str(folder)]) == 0
    assert (folder / f"{run.name}-state_dict.pt").is_file()
    (tmp_path / "link.pt").symlink_to(tmp_path / "elsewhere.pt")
    assert main([*export, str(tmp_path / "link.pt"), "--overwrite"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere.pt").exists()


@pytest.mark.parametrize(("name", "kwargs"), ECOSYSTEM, ids=[n for n, _ in ECOSYSTEM])
def test_library_backbones_are_analysed_layer_by_layer(name, kwargs):
    # issue 18.5: a library backbone was one layer, "model"; a timm ViT's "first layer" for
    # gradient coherence was the whole backbone (first == all)
    from manifold_ssl.evaluation.coherence import coherence_layers, coherence_with_control
    from manifold_ssl.experiments.analyze import backbone_layers

    torch.manual_seed(0)
    backbone = build_backbone(name, 3, True, image_size=16, kwargs=kwargs)
    layers = backbone_layers(backbone)
    assert layers[-1] == "model" and len(layers) >= 3
    if "resnet" in name:
        assert layers == ["model.maxpool", *[f"model.layer{i}" for i in range(1, 5)], "model"]
    else:
        assert layers == ["model.patch_embed", "model.blocks.0", "model.blocks.1", "model"]
    method = build_method("mmcr", backbone, "32-16")
    views = torch.randn(32, 2, 3, 16, 16)
    layers = coherence_layers(method, lambda v: method(v)[0], views[:8])
    # the encoder's layers (issue 27.1): the projector head is not the encoder's last layer
    assert all(n.startswith("backbone.model.") for n in layers.values())
    labels = torch.arange(2).repeat_interleave(16)
    out = coherence_with_control(method, lambda v: method(v)[0], views, labels, per_batch=8)
    assert out["first/within"] != pytest.approx(out["all/within"], abs=1e-4)
