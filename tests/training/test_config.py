"""Configuration: recipes, overrides and their errors, the learning-rate rule."""

from __future__ import annotations

import pytest

from manifold_ssl.config import (
    apply_overrides,
    config_from_dict,
    effective_lr,
    list_recipes,
    load_recipe,
)


def test_every_packaged_recipe_loads_and_names_known_components():
    from manifold_ssl.data.views import PRESETS
    from manifold_ssl.methods import METHODS, MULTIMODAL
    from manifold_ssl.models import BACKBONES

    names = list_recipes()
    assert {
        "digits_mmcr",
        "cifar10_mmcr",
        "cifar10_clamp",
        "cifar10_matrix_ssl",
        "cifar10_simclr",
        "cifar10_barlow_twins",
        "cifar10_byol",
    } <= set(names)
    for name in names:
        cfg = load_recipe(name)
        assert cfg.method.name in {*METHODS, *MULTIMODAL} and cfg.model.backbone in BACKBONES
        assert cfg.views.preset in PRESETS


def test_overrides_are_typed():
    cfg = apply_overrides(
        load_recipe("digits_mmcr"),
        [
            "--optim.lr=0.5",
            "--train.epochs=3",
            "--method.loss={lambd: 0.1}",
            "--eval.semi_supervised=[0.01, 0.1]",
            "--model.width=null",
            "--train.amp=false",
        ],
    )
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 3 and cfg.method.loss == {"lambd": 0.1}
    assert cfg.eval.semi_supervised == [0.01, 0.1] and cfg.model.width is None
    assert cfg.train.amp is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("--optim.lrr=0.1", "unknown config key 'optim.lrr' .*'lr'"),
        ("--optimizer.lr=0.1", "unknown config key 'optimizer'"),
        ("--train.epochs=two", "train.epochs.*integer"),
        ("--train.epochs=1.5", "train.epochs.*integer"),
        ("--optim.lr=true", "optim.lr.*number"),
        ("--optim.name=rmsprop", "optim.name must be one of"),
        ("--views.num_views=1", "num_views"),
        ("--optim=1", "section"),
        ("lr=0.1", "must name a section"),
        ("--optim.lr", "section.key=value"),
    ],
)
def test_bad_overrides_raise_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_recipe("digits_mmcr"), [override])


def test_unknown_recipe_and_unknown_yaml_key(tmp_path):
    with pytest.raises(ValueError, match="recipe 'nope' not found"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 2, batchsize: 3}\n")
    with pytest.raises(ValueError, match="train.batchsize.*batch_size"):
        load_recipe(str(bad))


@pytest.mark.parametrize("rule, expected", [("none", 0.3), ("linear", 0.6), ("sqrt", 0.3 * 2**0.5)])
def test_learning_rate_scaling_rule(rule, expected):
    cfg = config_from_dict(
        {"optim": {"lr": 0.3, "lr_scaling": rule, "ref_batch": 256}, "train": {"batch_size": 512}}
    )
    assert effective_lr(cfg) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["vicreg", "barlow_twins", "byol", "simsiam", "matrix_ssl"])
def test_two_view_methods_refuse_other_view_counts_before_training(name):
    # issue 18.16: VICReg with K = 8 failed at step 1, leaving a run directory behind
    with pytest.raises(ValueError, match=f"method {name} takes exactly 2 views"):
        apply_overrides(load_recipe("digits_mmcr"), [f"--method.name={name}"])
    cfg = apply_overrides(  # digits_mmcr's loss keys are MMCR's: the method's own instead
        load_recipe("digits_mmcr"),
        [f"--method.name={name}", "--views.num_views=2", "--method.loss={}"],
    )
    assert cfg.views.num_views == 2


def test_a_recipe_path_without_its_suffix_is_found(tmp_path, monkeypatch):
    # issue 18.22: configs/mine (for configs/mine.yaml) was "not found"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("train: {epochs: 3}\n")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("configs/mine").train.epochs == 3
    assert load_recipe(str(tmp_path / "configs" / "mine")).train.epochs == 3
    (tmp_path / "local.yaml").write_text("train: {epochs: 4}\n")
    assert load_recipe("local").train.epochs == 4
    assert load_recipe("digits_mmcr").data.name == "digits"  # a packaged name
    with pytest.raises(ValueError, match="not found"):
        load_recipe("configs/none")
