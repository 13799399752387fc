"""The command line explains itself: ``--version``, ``distilvpr list ...`` read from the registries and the
config dataclasses, and help text on every option (fast: the parsers are built, nothing runs)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from distilvpr_lib.cli import build_parser, main


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("distilvpr",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        else:
            yield path, parser, action


def test_every_option_of_every_subcommand_has_help() -> None:
    missing, hidden_choices = [], []
    for path, parser, action in _actions(build_parser()):
        group = next((g for g in parser._action_groups if action in g._group_actions), None)
        deliberately_hidden = action.help == argparse.SUPPRESS and group is not None and "unused" in group.title
        if not deliberately_hidden and (not action.help or action.help == argparse.SUPPRESS):
            missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
        if action.choices and action.metavar is not None and not all(str(c) in action.help for c in action.choices):
            hidden_choices.append(f"{' '.join(path)} {'/'.join(action.option_strings)}")
    assert not missing, f"options without help: {missing}"
    assert not hidden_choices, f"options whose choices --help does not show: {hidden_choices}"


def test_help_shows_no_doubled_percent_sign(capsys) -> None:
    for name in ("study-table", "train", "list", "distill", "train-teacher"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "%%" not in out and "%(" not in out, f"{name} --help: {out}"
    with pytest.raises(SystemExit):
        main(["study-table", "--help"])
    assert "95 % BCa" in " ".join(capsys.readouterr().out.split())


def test_version() -> None:
    import distilvpr_lib

    proc = subprocess.run([sys.executable, "-m", "distilvpr_lib.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"distilvpr {distilvpr_lib.__version__}"


def test_list_presets_and_terms_come_from_the_registry(capsys) -> None:
    from distilvpr_lib.losses.distiller import PRESETS, known_weight_names
    from distilvpr_lib.losses.registry import LOSSES

    assert main(["list", "presets"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows] == list(PRESETS)
    assert "rkdg=10" in next(r for r in rows if r.split()[0] == "distilvpr")
    assert main(["list", "terms"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in known_weight_names())
    assert main(["list", "methods"]) == 0
    assert [r.split()[0] for r in capsys.readouterr().out.splitlines()] == sorted(LOSSES)


def test_list_config_has_every_key_with_default_and_help(capsys) -> None:
    from distilvpr_lib.config import ExperimentConfig, apply_overrides, config_fields, profile_config

    fields = config_fields()
    cfg = ExperimentConfig()
    for f in fields:
        apply_overrides(cfg, {f.key: f.default})  # every listed key is a real config key
        assert f.help, f"{f.key} has no help comment in config.py"
        section, name = f.key.split(".")
        assert getattr(getattr(cfg, section), name) == f.default
    assert {f.key: f.default for f in config_fields("smoke")}["train.epochs"] == profile_config("smoke").train.epochs
    assert main(["list", "config", "--profile", "smoke"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == len(fields) and rows[0].split()[0] == "data.dataset_dir" and "'data/smoke'" in rows[0]


def test_list_profiles(capsys) -> None:
    from distilvpr_lib.config import PROFILES

    assert main(["list", "profiles"]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")] == list(PROFILES)
    assert "teacher teacher_weights/smoke, batch runs/smoke" in out


def test_list_rejects_an_unknown_topic(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["list", "nothing"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
