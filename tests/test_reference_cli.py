"""`distilvpr train` accepts the reference option names and maps them onto the workbook's config."""

from __future__ import annotations

import argparse

import pytest

from distilvpr_lib.cli import main
from distilvpr_lib.reference import (FAITHFUL_OVERRIDES, ReferenceOptionError, add_reference_options,
                                     experiment_name, resolve_reference_options)

OXFORD_SEED = ("--model minklocmmcat --teacher_weights_path t/r1_best_ep57_97.24.pth --rkdgloss_weight 10 "
               "--crosslogitdistloss_weight_st2ss 0.1 --crosslogitsimloss_weight_st2ss 0.1 "
               "--crosslogitgeodistloss_weight_st2ss 0.1").split()
BOREAS_SEED = ("--model minklocmmcat --teacher_weights_path t/r1_best_ep48_93.05.pth --tryid 0 --rkdgloss_weight 1 "
               "--crosslogitdistloss_weight_st2ss 0.1 --crosslogitsimloss_weight_st2ss 0.1 "
               "--crosslogitgeodistloss_weight_st2ss 0.1 --dataset boreas").split()


def _resolve(argv: list[str], **kw):
    parser = argparse.ArgumentParser()
    add_reference_options(parser)
    return resolve_reference_options(parser.parse_args(argv), **kw)


def test_oxford_seed_command_is_the_full_distilvpr_objective() -> None:
    run = _resolve(OXFORD_SEED)
    assert run.train_mode == "train_student"
    assert run.teacher_weights_path.endswith("r1_best_ep57_97.24.pth")
    assert run.config.distill.terms == {"rkdg": 10.0, "cross_euclidean_st2ss": 0.1, "cross_spherical_st2ss": 0.1,
                                        "cross_hyperbolic_st2ss": 0.1}
    # the resolved weights are exactly those of the distilvpr preset
    from distilvpr_lib.config import DistillConfig
    from distilvpr_lib.losses.distiller import resolve_term_weights

    assert resolve_term_weights(run.config.distill) == resolve_term_weights(DistillConfig(method="distilvpr"))
    # the reference's experiment name, as in docs/METHOD.md §9.2
    assert experiment_name(run) == (
        "0oxford__T-minklocmmcat__resnet18__img256__pc128__32_64_64__1_1_1__1__allstgF__S-resnet18__384__b128"
        "__+rkdg__w10.0__+crodist_st2ss0.1__+crosim_st2ss0.1__+crogdist_st2ss0.1")
    assert run.config.train.epochs == 60 and run.config.train.batch_size == 128  # paper profile = reference


def test_boreas_seed_command() -> None:
    run = _resolve(BOREAS_SEED)
    assert run.config.data.layout == "boreas" and run.config.data.quantization_size == 1.0
    assert run.config.distill.terms["rkdg"] == 1.0


def test_options_map_onto_the_config() -> None:
    run = _resolve("--train_mode train_teacher --epochs 3 --train_batch_size 16 --image_lr 2e-4 --cloud_lr 5e-3 "
                   "--milestones 2_3 --margin 0.3 --weights 0.6_0.4_0 --curvature 0.5 --task_logit_weight 2".split(),
                   profile="smoke")
    c = run.config
    assert run.train_mode == "train_teacher"
    assert (c.train.epochs, c.train.batch_size, c.train.image_lr, c.train.cloud_lr) == (3, 16, 2e-4, 5e-3)
    assert c.train.milestones == (2, 3) and c.train.margin == 0.3
    assert c.train.teacher_loss_weights == (0.6, 0.4, 0.0)
    assert c.train.student_task_weight == pytest.approx(1.2)  # weights[0] x task_logit_weight
    assert c.distill.curvature == 0.5
    assert c.model.cloud_dim == 32  # not given: from the smoke profile


def test_per_mapping_weights_and_tt2st() -> None:
    run = _resolve("--logit_mapping_fn id_topoin --crosslogitdistloss_weight_st2ss 0.1_0.2 "
                   "--crosslogitsimloss_weight_tt2st 0.3 --crosslogitgeodistloss_weight_st2ss 0.4".split())
    assert run.config.distill.terms == {"cross_euclidean_st2ss": 0.1, "cross_euclidean_poincare_st2ss": 0.2,
                                        "cross_spherical_tt2st": 0.3, "cross_spherical_poincare_tt2st": 0.3,
                                        "cross_hyperbolic_st2ss": 0.4}
    with pytest.raises(ReferenceOptionError, match="expected 1"):
        _resolve(["--crosslogitdistloss_weight_st2ss", "0.1_0.2"])


def test_nokd_and_bad_values() -> None:
    assert _resolve(["--distil_method", "nokd", "--rkdgloss_weight", "10"]).config.distill.terms == {}
    for argv, match in ((["--model", "minkloc3d"], "minklocmmcat"), (["--distil_method", "x"], "distil_method"),
                        (["--weights", "0.5_0.5"], "three"), (["--train_mode", "x"], "train_mode"),
                        (["--crosslogitdistloss_type", "L1"], "share one")):
        with pytest.raises(ReferenceOptionError, match=match):
            _resolve(argv)


def test_faithful_preset() -> None:
    c = _resolve([], faithful=True).config
    assert c.train.clean_teacher_cache is False and c.train.use_validation_split is False
    assert set(FAITHFUL_OVERRIDES) >= {"train.clean_teacher_cache", "data.image_lidar_k"}


def test_cli_notes_unused_and_rejects_unknown(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--dry_run", *OXFORD_SEED, "--save_weights", "True", "--logdir", "x"]) == 0
    out = capsys.readouterr().out
    assert "note: --save_weights" in out and "note: --logdir" in out and '"rkdg": 10.0' in out
    with pytest.raises(SystemExit):
        main(["train", "--not_an_option", "1"])
