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
