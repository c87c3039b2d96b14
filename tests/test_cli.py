"""The command line end to end: pretrain → report → evaluate; the main job (slow)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import TINY_MODEL

from manifold_ssl.cli import main

TINY = [
    *TINY_MODEL,
    "--train.epochs=1",
    "--train.knn_every=1",
    "--eval.linear_max_iter=30",
    "--eval.linear_weight_decays=[1e-4, 1e-2]",
]


def test_pretrain_writes_a_complete_run_and_evaluate_reads_it(tmp_path, capsys):
    args = [
        "pretrain",
        "--quiet",
        f"--data.root={tmp_path / 'data'}",
        f"--train.out_dir={tmp_path / 'runs'}",
        "--eval.semi_supervised=[0.1]",
        "--eval.finetune_epochs=20",
        *TINY,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    for name in (
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "eval.json",
        "report.md",
        "curves.png",
        "checkpoints/last.pt",
    ):
        assert (run / name).stat().st_size > 0, name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["manifold_ssl_version"]
    results = json.loads((run / "eval.json").read_text())["results"]
    assert set(results) == {
        "pretrained",
        "random_init",
        "raw_pixels",
        "finetune_0.1",
        "online_linear",
    }
    # the online linear head, trained during pretraining (issue 19), beside the offline probe
    assert 0 <= results["online_linear"]["linear_test_accuracy"] <= 1
    # chance is 0.10 on 10 classes; one epoch of a width-4 encoder measured 0.69 (pretrained),
    # 0.78 (random init), 0.96 (raw pixels), and 0.28 fine-tuned on 10% of the labels
    for name in ("pretrained", "random_init", "raw_pixels"):
        assert results[name]["linear_test_accuracy"] >= 0.5, name
        assert results[name]["knn_test_accuracy"] >= 0.5, name
    assert results["finetune_0.1"]["linear_test_accuracy"] >= 0.2
    assert "random_init" in out and str(run) in out and "final percent error" in out

    assert main(["evaluate", str(run)]) == 0
    # issue 18.8: an evaluation with other settings is written beside the run's own, with them
    before = json.loads((run / "eval.json").read_text())
    assert before["settings"]["overrides"] == []
    assert main(["evaluate", str(run), "--eval.finetune_epochs=2", "--quiet"]) == 0
    assert json.loads((run / "eval.json").read_text()) == before
    other = json.loads((run / "eval-finetune_epochs=2.json").read_text())
    assert other["settings"]["overrides"] == ["eval.finetune_epochs=2"]
    assert other["settings"]["eval"]["finetune_epochs"] == 2
    assert "finetune_epochs=2" in (run / "report-finetune_epochs=2.md").read_text()
    assert "pretrained" in (run / "report.md").read_text()
    # an eval.json of other settings (written before settings were recorded) is kept aside
    before.pop("settings")
    (run / "eval.json").write_text(json.dumps(before))
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert json.loads((run / "eval.1.json").read_text()) == before
    assert main(["evaluate", str(run), "--optim.lr=1"]) == 2
    assert "eval, text.class_names, text.zero_shot_templates only" in capsys.readouterr().err
    # a config edited after the fact no longer matches the checkpoint
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["optim"]["lr"] = 0.123
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(run)]) == 2
    assert "other values of ['optim.lr']" in capsys.readouterr().err


def test_pretrain_rejects_unknown_keys_and_bad_resume(tmp_path, capsys):
    assert main(["pretrain", "--train.epochz=3"]) == 2
    assert "unknown config key 'train.epochz'" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path)]) == 2
    assert main(["pretrain", "--resume", str(tmp_path), "--optim.lr=1"]) == 2
    assert "resume" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_beats_the_random_encoder(tmp_path, capsys):
    """`manifold-ssl pretrain` with no arguments (the README's first command), on digits."""
    assert (
        main(
            [
                "pretrain",
                "--quiet",
                f"--data.root={tmp_path / 'data'}",
                f"--train.out_dir={tmp_path / 'runs'}",
            ]
        )
        == 0
    )
    (run,) = (tmp_path / "runs").iterdir()
    r = json.loads((run / "eval.json").read_text())["results"]
    assert r["pretrained"]["linear_test_accuracy"] > r["random_init"]["linear_test_accuracy"]
    assert r["pretrained"]["knn_test_accuracy"] > r["random_init"]["knn_test_accuracy"]


def test_the_results_table_stays_aligned_with_long_row_names(capsys):
    # issue 18.21: rows such as "augmented_probe" pushed their columns out of line
    from manifold_ssl.cli import _print_results

    row = {"knn_val_accuracy": 0.5, "knn_test_accuracy": 0.5, "linear_test_accuracy": 0.25}
    _print_results({"pretrained": row, "augmented_probe_with_a_long_name": row, "raw": {}})
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "|" in ln]
    assert len(lines) == 4 and len({ln.index("|") for ln in lines}) == 1
    assert len({ln.rindex("|") for ln in lines}) == 1


def test_feature_extraction_shows_its_progress(capsys):
    # issue 18.21: evaluate spent 38 s extracting CIFAR-10 features without a word
    import torch

    from manifold_ssl.evaluation.features import extract_features

    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    feats = extract_features(encoder, images, (0.5,) * 3, (0.2,) * 3, 4, progress="features")
    assert feats.shape == (10, 2) and "features" in capsys.readouterr().err
    extract_features(encoder, images, (0.5,) * 3, (0.2,) * 3, 4)
    assert capsys.readouterr().err == ""


def test_losses_lists_plain_text(capsys):
    # issue 18.22: the list printed Sphinx markup (``forward``, :func:`...`)
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert "mmcr" in out and "``" not in out and ":func:" not in out and "See" not in out


def _pretrain_config(monkeypatch, *argv):
    """The config ``manifold-ssl pretrain ARGV`` would train (stopped before training)."""
    seen = {}

    def stop(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise ValueError("stopped before training")

    monkeypatch.setattr("manifold_ssl.run.pipeline.run", stop)
    assert main(["pretrain", *argv]) == 2
    return seen["cfg"]


def test_a_key_takes_its_value_after_a_space_as_argparse_flags_do(monkeypatch, capsys):
    # issue 27.14: --train.epochs 3 took 3 for the recipe ("recipe '3' not found")
    cfg = _pretrain_config(monkeypatch, "--train.epochs", "3")
    assert cfg.train.epochs == 3 and cfg.data.name == "digits"
    cfg = _pretrain_config(
        monkeypatch, "--train.epochs", "3", "cifar10_mmcr", "--data.workers", "-1"
    )
    assert (cfg.train.epochs, cfg.data.name, cfg.data.workers) == (3, "cifar10", -1)
    # a boolean key alone means true and leaves the recipe after it alone
    cfg = _pretrain_config(monkeypatch, "--model.sync_bn", "cifar10_mmcr")
    assert cfg.model.sync_bn is True and cfg.data.name == "cifar10"
    assert _pretrain_config(monkeypatch, "--model.sync_bn", "false").model.sync_bn is False
    with pytest.raises(SystemExit):
        main(["pretrain", "--train.epochs", "--train.seed=1"])
    assert "--train.epochs needs a value: --train.epochs=VALUE" in capsys.readouterr().err
    assert main(["export", "run", "--export.format", "bogus"]) == 2  # a command's own keys
    assert "--export.format: expected one of" in capsys.readouterr().err


def test_a_loss_keyword_is_checked_before_anything_is_built(monkeypatch, capsys, tmp_path):
    # issue 27.14: --method.loss.nuclr=polar ended in a raw TypeError once the model was built
    from manifold_ssl.config import apply_overrides, load_recipe

    monkeypatch.setattr("manifold_ssl.run.pipeline.run", lambda *a, **k: pytest.fail("built"))
    assert main(["pretrain", "--method.loss.nuclr=polar"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'method.loss.nuclr' for the mmcr loss" in err
    assert "(did you mean 'nuclear'?)" in err and "lambd, local_views, nuclear, polar_steps" in err
    recipe = tmp_path / "clip.yaml"
    recipe.write_text("method: {name: clip, loss: {logit_scal: 10}}\nviews: {num_views: 1}\n")
    with pytest.raises(
        ValueError, match="'method.loss.logit_scal' for the clip loss.*'logit_scale'"
    ):
        load_recipe(str(recipe))
    # an entry given by a dotted path keeps the recipe's other entries; a whole mapping replaces
    clamp = load_recipe("cifar10_clamp")
    assert clamp.method.loss == {"r_s": 7.0, "form": "official"}
    assert apply_overrides(clamp, ["--method.loss.r_s=5"]).method.loss == {
        "r_s": 5,
        "form": "official",
    }
    assert apply_overrides(clamp, ["--method.loss={r_s: 5}"]).method.loss == {"r_s": 5}
    with pytest.raises(ValueError, match="give method.loss whole or by entries"):
        apply_overrides(clamp, ["--method.loss={r_s: 5}", "--method.loss.form=official"])
