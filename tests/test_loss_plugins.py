"""Bring your own loss (losses.plugins): a loss in the user's own file, registered without editing the package,
runs by name with the method-name modifiers; bad plugins are one-line option errors naming the file."""

from __future__ import annotations

import textwrap

import pytest
import torch

from distilvpr_lib.config import DistillConfig, apply_overrides, profile_config
from distilvpr_lib.errors import OptionError
from distilvpr_lib.losses import plugins
from distilvpr_lib.losses.distiller import PRESETS, Distiller, register_preset, resolve_term_weights
from distilvpr_lib.losses.registry import LOSSES

PLUGIN = textwrap.dedent('''
    from distilvpr_lib.losses.base import DistillLoss, check_pair
    from distilvpr_lib.losses.distiller import register_preset
    from distilvpr_lib.losses.registry import register_loss

    @register_loss("{name}")
    class MeanGapLoss(DistillLoss):
        """|mean(s) - mean(t)|^2 summed over dimensions (a toy)."""

        def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
            check_pair(student, teacher, "{name}")
            return {{"{name}": (student.mean(0) - teacher.detach().mean(0)).pow(2).sum()}}

    register_preset("{name}", {{"{name}": 2.0}})
''')


@pytest.fixture
def clean_registry(monkeypatch):
    """Plugins mutate the registries: restore them after each test (each test's plugin file is its own)."""
    losses, presets = dict(LOSSES), dict(PRESETS)
    yield
    LOSSES.clear()
    LOSSES.update(losses)
    PRESETS.clear()
    PRESETS.update(presets)


def test_a_plugin_loss_runs_by_name_with_modifiers(tmp_path, monkeypatch, clean_registry):
    plugin = tmp_path / "my_loss.py"
    plugin.write_text(PLUGIN.format(name="mean_gap"))
    monkeypatch.setenv(plugins.ENV_VAR, str(plugin))
    cfg = apply_overrides(profile_config("smoke"), {"distill.method": "mean_gap_x10_norm"})
    assert cfg.train.task_normalize is True
    weights = resolve_term_weights(cfg.distill)
    assert weights["mean_gap"] == pytest.approx(20.0)   # preset weight 2 x 10
    distiller = Distiller(cfg.distill)
    student = torch.tensor([[1.0, 0.0], [3.0, 2.0]])    # mean (2, 1)
    teacher = torch.tensor([[0.0, 0.0], [0.0, 2.0]])    # mean (0, 1)
    terms = distiller(student, teacher, None, None)
    assert terms["mean_gap"].item() == pytest.approx(20.0 * 4.0)  # weight 20 x |(2,1)-(0,1)|^2 = 4
    assert plugin.resolve() in plugins.load_loss_plugins()        # loaded once; a second call imports nothing new
    assert len([p for p in plugins.load_loss_plugins() if p == plugin.resolve()]) == 1


def test_without_the_plugin_the_name_is_unknown(monkeypatch, clean_registry):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    with pytest.raises(KeyError, match="unknown distillation method 'mean_gap2'"):
        resolve_term_weights(DistillConfig(method="mean_gap2"))


def test_bad_plugins_are_option_errors_naming_the_file(tmp_path, monkeypatch, clean_registry):
    missing = tmp_path / "nope.py"
    monkeypatch.setenv(plugins.ENV_VAR, str(missing))
    with pytest.raises(OptionError, match=f"{missing}: loss plugin not found"):
        resolve_term_weights(DistillConfig(method="nokd"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv(plugins.ENV_VAR, str(broken))
    with pytest.raises(OptionError, match=r"broken.py: loss plugin failed to import: RuntimeError: boom"):
        resolve_term_weights(DistillConfig(method="nokd"))
    assert "\n" not in str(OptionError(f"{broken}: x"))


def test_register_preset_checks_its_input(clean_registry):
    with pytest.raises(ValueError, match="modifier"):
        register_preset("mine_norm", {"kd": 1.0})
    with pytest.raises(KeyError, match="unknown loss term"):
        register_preset("mine", {"no_such_term": 1.0})
    with pytest.raises(ValueError, match="exists with other weights"):
        register_preset("kd", {"kd": 3.0})
    register_preset("kd_twice", {"kd": 2.0})
    assert resolve_term_weights(DistillConfig(method="kd_twice_x0.5"))["kd"] == pytest.approx(1.0)
