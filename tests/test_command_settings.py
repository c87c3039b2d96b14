"""One configuration system: every command's settings are keys (default, help, check) that the
command line reads as ``--key value`` and as ``--section.key=value``; tested for every command
in the table, so a new command or key is covered for free."""

from __future__ import annotations

import dataclasses
import json

import pytest

from manifold_ssl import cli
from manifold_ssl._keys import check_flag, settings_from

WITH_SETTINGS = [name for name, c in cli.COMMANDS.items() if c.settings]


def _settings(name):
    return cli._settings_class(cli.COMMANDS[name])


def _parse(argv):
    """The settings ``main`` would hand the command (without running it)."""
    parser = cli.build_parser()
    dotted = [a for a in argv if a.startswith(f"--{argv[0]}.")]
    args = parser.parse_args([a for a in argv if a not in dotted])
    cli._read_settings(args, dotted)
    return args.settings


def test_the_commands_with_settings_are_the_ones_the_issue_names():
    assert set(WITH_SETTINGS) == {"simulate", "analyze", "export", "lm", "launch"}


@pytest.mark.parametrize("name", WITH_SETTINGS)
def test_every_key_has_help_a_flag_and_its_dotted_form_in_the_help(name, capsys):
    cls = _settings(name)
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(cls):
        assert f.metadata["help"], f"{name}: key {f.name} has no help"
        assert f"--{f.name.replace('_', '-')}" in text
        assert f"--{name}.{f.name}=..." in text


def _other_value(f, default):
    """A value of key ``f`` other than its default that its check accepts, and its text; None
    for names and paths (the error tests cover them)."""
    if f.name in ("P", "D"):
        return [8, 16, 32], "8:32"
    if isinstance(default, bool):
        return not default, json.dumps(not default)
    if f.type in ("int", "int | None"):
        return (default or 0) + 3, str((default or 0) + 3)
    if f.type == "float":
        return default + 0.5, str(default + 0.5)
    return None


@pytest.mark.parametrize("name", WITH_SETTINGS)
def test_flags_and_dotted_keys_give_the_same_settings(name):
    cls = _settings(name)
    given = {"export": ["run", "--format", "timm", "--out", "x.pt"], "launch": ["slurm"]}.get(
        name, []
    )
    base = _parse([name, *given])
    for f in dataclasses.fields(cls):
        other = _other_value(f, getattr(base, f.name))
        if other is None:
            continue
        value, text = other
        by_flag = _parse([name, *given, f"--{f.name.replace('_', '-')}", text])
        by_key = _parse([name, *given, f"--{name}.{f.name}={text}"])
        assert getattr(by_flag, f.name) == getattr(by_key, f.name) == value, f.name
        assert by_flag == by_key


@pytest.mark.parametrize("name", WITH_SETTINGS)
def test_bad_values_name_the_key_in_both_spellings(name, capsys):
    cls = _settings(name)
    positional = {"export": ["run"], "launch": ["slurm"]}.get(name, [])
    checked = [f.name for f in dataclasses.fields(cls) if f.metadata["check"] is not None]
    assert checked, f"{name}: no key has a check"
    for key in checked:
        bad = next(t for t in ("-7", "bogus", "") if _refused(cls, key, t))
        flag = f"--{key.replace('_', '-')}"
        with pytest.raises(SystemExit):
            cli.main([name, *positional, flag, bad])
        assert f"argument {flag}: expected" in capsys.readouterr().err
        assert cli.main([name, *positional, f"--{name}.{key}={bad}"]) == 2
        assert f"--{name}.{key}: expected" in capsys.readouterr().err
    assert cli.main([name, *positional, f"--{name}.{checked[0]}x=1"]) == 2
    assert f"unknown config key '{name}.{checked[0]}x' (did you mean '{checked[0]}'?)" in (
        capsys.readouterr().err
    )


def _refused(cls, key, text):
    try:
        check_flag(cls, key, text)
    except ValueError:
        return True
    return False


def test_a_key_of_another_command_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--lm.steps=3"])
    assert "unrecognized arguments: --lm.steps=3" in capsys.readouterr().err


def test_settings_from_reads_the_keys_parse_and_checks_the_whole():
    from manifold_ssl.experiments.simulate import SimulateConfig
    from manifold_ssl.lm import LMConfig

    sim = settings_from(SimulateConfig, {"P": "16:64", "D": [8]}, "simulate")
    assert sim.P == [16, 32, 64] and sim.D == [8]
    with pytest.raises(ValueError, match="simulate.repeats must be a positive integer, got 0"):
        settings_from(SimulateConfig, {"repeats": 0}, "simulate")
    assert check_flag(LMConfig, "mce_order", "0") == 0
    assert settings_from(LMConfig, {"mce_order": 0}).mce_order is None  # the exact log
    assert settings_from(LMConfig, {"text": "a.txt"}).task == "text"
    with pytest.raises(ValueError, match="task 'text' needs --text"):
        settings_from(LMConfig, {"task": "text"})


def _every_key():
    """(where, dotted name, settings class, field) of every key in the registry: the run's
    config and every command's settings."""
    from manifold_ssl.config import Config

    keys = []
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        keys += [("config", f"{section.name}.{f.name}", cls, f) for f in dataclasses.fields(cls)]
    for name in WITH_SETTINGS:
        cls = _settings(name)
        keys += [(name, f"{name}.{f.name}", cls, f) for f in dataclasses.fields(cls)]
    return keys


def _documented_values(f):
    """A key's default and the values its check lists (``one_of``, a registry's names), and
    both booleans for a boolean key."""
    default = cli._default_of(f)
    values = [default, *getattr(f.metadata["check"], "options", [])]
    if isinstance(default, bool):
        values += [True, False]
    return [v for i, v in enumerate(values) if all(v is not w for w in values[:i])]


@pytest.mark.parametrize("where, dotted, cls, f", _every_key(), ids=lambda v: str(v)[:40])
def test_every_key_reads_back_its_default_and_allowed_values(where, dotted, cls, f, tmp_path):
    # issue 27.9: --train.wandb=off (the documented default) read as YAML 1.1's False was
    # refused ("expects a string, got False"); an optional key must read null as None
    from manifold_ssl._keys import check_settings, update_settings, value_text
    from manifold_ssl.config import RECIPE_DIR, Config, read_overrides, read_packaged_yaml

    check = f.metadata["check"]
    for value in _documented_values(f):
        if check is not None and check(value):  # a required key (export --format): no default
            continue
        text = value_text(value)  # as --help shows it
        if where != "config":
            assert check_flag(cls, f.name, text) == value, (dotted, text)
            continue
        section, name = dotted.split(".")
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"{section}:\n  {name}: {text}\n")
        _, from_yaml = read_packaged_yaml(str(recipe), RECIPE_DIR, "recipe", [])
        for values in (read_overrides([f"--{dotted}={text}"]), from_yaml):
            cfg = Config()
            update_settings(cfg, values)
            check_settings(cfg)
            got = getattr(getattr(cfg, section), name)
            assert got == value and type(got) is type(value), (dotted, text, got)


def test_a_string_key_takes_the_text_as_typed():
    # issue 27.9: YAML 1.1 read off/no/yes as booleans, null as None, 8:32 as 512
    from manifold_ssl.config import apply_overrides, load_recipe

    base = load_recipe("digits_mmcr")
    cfg = apply_overrides(base, ["--train.wandb=off", "--train.name=no", "--data.path=null"])
    assert (cfg.train.wandb, cfg.train.name, cfg.data.path) == ("off", "no", None)
    assert apply_overrides(base, ["--train.name='null'"]).train.name == "null"
    assert apply_overrides(base, ["--train.name=8:32"]).train.name == "8:32"
    assert apply_overrides(base, ["--optim.lr=1e-4"]).optim.lr == 1e-4
    with pytest.raises(
        ValueError, match=r"keep_best must be one of .* \(write none to leave it off"
    ):
        apply_overrides(base, ["--train.keep_best=null"])
    assert check_flag(_settings("lm"), "task", "null") is None


def test_pretrain_help_lists_every_objectives_keywords_with_defaults():
    # issue 29: method.loss was the one key with no default and no help
    from manifold_ssl.config import config_help
    from manifold_ssl.methods import METHODS, MULTIMODAL

    text = config_help()
    for name in {*METHODS, *MULTIMODAL}:
        assert f"\n      {name}: " in text, name
    assert "      mmcr: lambd=0.0, local_views=online, nuclear=gram" in text
    assert "      simclr: temperature=0.5\n" in text
    assert "      vicreg: sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0\n" in text
