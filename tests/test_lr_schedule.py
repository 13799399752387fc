"""The learning-rate schedule (``train.lr_schedule``): the step schedule (default, unchanged) and linear warm-up +
cosine annealing, against hand-computed per-epoch values; resume from a checkpoint; the config checks; the
run-folder rules (fingerprint, resume with another number of epochs); ``distilvpr list config``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.config_checks import check_config_values
from distilvpr_lib.config_types import ConfigValueError
from distilvpr_lib.engine.runs.run_folder import RunConfigMismatchError, check_resumable, config_fingerprint
from distilvpr_lib.engine.train.checkpoint import load_checkpoint, save_checkpoint
from distilvpr_lib.engine.train.optim import build_scheduler
from distilvpr_lib.data.files import write_json


def _train(epochs: int, **fields):
    return dataclasses.replace(profile_config("smoke").train, epochs=epochs, **fields)


def _optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam([nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(train_cfg, epochs: int | None = None, optimizer=None, scheduler=None) -> list[float]:
    """The LR each epoch trains at, stepping the scheduler once per epoch as the trainer does."""
    optimizer = optimizer or _optimizer()
    scheduler = scheduler or build_scheduler(optimizer, train_cfg)
    seen = []
    for _ in range(epochs or train_cfg.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: nothing moves (the order the trainer keeps: optimiser, then schedule)
        scheduler.step()
    return seen


# ---------------------------------------------------------------------------
# Per-epoch values, by hand
# ---------------------------------------------------------------------------
def test_step_schedule_is_the_default_and_unchanged():
    train = _train(4, milestones=(2,), gamma=0.1)
    assert train.lr_schedule == "step" and train.warmup_epochs == 0
    assert _lrs(train) == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert type(build_scheduler(_optimizer(), train)).__name__ == "MultiStepLR"


@pytest.mark.parametrize("warmup, expected", [
    # epoch e (1-based) trains at base·f(e-1): warm-up f(k) = (k+1)/(W+1) for k < W, then
    # f(k) = (1 + cos(pi·(k-W)/(E-W)))/2: 1 at the first cosine epoch, 0 one epoch after the last.
    (0, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]),  # 1, .8536, .5, .1464
    (1, [0.5, 1.0, 0.75, 0.25]),
    (2, [1 / 3, 2 / 3, 1.0, 0.5]),
])
def test_cosine_with_warmup_by_hand(warmup, expected):
    train = _train(4, lr_schedule="cosine", warmup_epochs=warmup, milestones=())
    assert _lrs(train) == pytest.approx([1e-3 * f for f in expected], rel=1e-12)


def test_cosine_applies_to_every_group_at_its_own_rate():
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": [params[0]], "lr": 1e-4}, {"params": [params[1]], "lr": 1e-3}])
    scheduler = build_scheduler(optimizer, _train(4, lr_schedule="cosine", warmup_epochs=1, milestones=()))
    for _ in range(2):
        optimizer.step()
        scheduler.step()  # -> third epoch: factor 0.75
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.75e-4, 0.75e-3], rel=1e-12)


def test_cosine_resumed_from_a_checkpoint_continues_the_same_sequence(tmp_path):
    train = _train(6, lr_schedule="cosine", warmup_epochs=2, milestones=())
    whole = _lrs(train)
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, train)
    first = _lrs(train, epochs=3, optimizer=optimizer, scheduler=scheduler)
    save_checkpoint(tmp_path / "last.pt", {"epoch": 3, "optimizer": optimizer.state_dict(),
                                           "scheduler": scheduler.state_dict()})
    state = load_checkpoint(tmp_path / "last.pt")  # weights-only load, as a resume does
    optimizer2 = _optimizer(lr=0.5)  # built fresh, from another LR: the state must restore everything
    scheduler2 = build_scheduler(optimizer2, train)
    optimizer2.load_state_dict(state["optimizer"])
    scheduler2.load_state_dict(state["scheduler"])
    rest = _lrs(train, epochs=3, optimizer=optimizer2, scheduler=scheduler2)
    assert first + rest == pytest.approx(whole, rel=1e-12)
    expected = [1 / 3, 2 / 3, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]
    assert whole == pytest.approx([1e-3 * f for f in expected], rel=1e-12)


class _TinyImageModel(nn.Module):
    """Images (B,3,H,W) -> (B,16)."""

    def __init__(self) -> None:
        super().__init__()
        self.image_net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                       nn.Linear(8, 16))

    def forward(self, batch):
        return {"embedding": self.image_net(batch["images"])}


@pytest.mark.slow
def test_trainer_records_the_cosine_lrs_and_resumes_them(smoke_dataset, tmp_path):
    """End to end through :class:`Trainer`: a run stopped after epoch 2 and resumed trains epochs 3-4 at the LRs
    of an uninterrupted run (the scheduler's state is in ``last.pt``)."""
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.train.loop import Trainer
    from distilvpr_lib.engine.train.objectives import StudentObjective
    from distilvpr_lib.engine.train.optim import build_optimizer, student_parameter_groups
    from distilvpr_lib.engine.train.seeding import seed_everything
    from torch.utils.data import DataLoader

    from distilvpr_lib.data.collate import make_collate_fn
    from distilvpr_lib.data.datasets import TrainingDataset
    from distilvpr_lib.data.sampler import PositivePairBatchSampler

    benchmark = Benchmark.load(smoke_dataset)
    cfg = profile_config("smoke")

    class StopAtEpoch:
        """The loader, interrupted at the start of epoch ``stop`` (``last.pt`` then holds epoch ``stop - 1``)."""

        def __init__(self, loader, stop):
            self.loader, self.stop, self.started = loader, stop, 0

        def __getattr__(self, name):
            return getattr(self.loader, name)

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            self.started += 1
            if self.started == self.stop:
                raise KeyboardInterrupt("stopped")
            return iter(self.loader)

    def trainer(out, epochs=4, stop=None):
        cfg.train = dataclasses.replace(cfg.train, epochs=epochs, batch_size=8, lr_schedule="cosine",
                                        warmup_epochs=1, milestones=(), image_lr=1e-3)
        torch.manual_seed(0)
        model = _TinyImageModel()
        optimizer = build_optimizer(student_parameter_groups(model, cfg.train), cfg.train)
        sampler = PositivePairBatchSampler(benchmark.training_tuples, cfg.train.batch_size, seed=cfg.train.seed)
        loader = DataLoader(TrainingDataset(benchmark, cfg.data, augment=True), batch_sampler=sampler,
                            collate_fn=make_collate_fn(benchmark.training_tuples, cfg.data.quantization_size))
        return Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train),
                       StopAtEpoch(loader, stop) if stop else loader, cfg.train, out, progress=False,
                       tensorboard=False, fingerprint=config_fingerprint(cfg))

    seed_everything(0)
    full = trainer(tmp_path / "full").fit(resume=False)
    lrs = [e["lr"]["student"] for e in full.epochs]
    assert lrs == pytest.approx([0.5e-3, 1e-3, 0.75e-3, 0.25e-3], rel=1e-12)
    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "resumed", stop=3).fit(resume=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = trainer(tmp_path / "resumed").fit(resume=True)
    assert resumed.resumed_from == 2
    assert [e["lr"]["student"] for e in resumed.epochs] == lrs
    assert [e["losses"] for e in resumed.epochs] == [e["losses"] for e in full.epochs]
    # the trainer itself refuses to continue a cosine run with another number of epochs (the fingerprint holds
    # them), so a run's rates never come from two schedules
    with pytest.raises(ValueError, match="another configuration"):
        trainer(tmp_path / "full", epochs=8).fit(resume=True)


# ---------------------------------------------------------------------------
# Config checks: one-line errors naming the field
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"train.lr_schedule": "onecycle"}, "train.lr_schedule: must be one of step, cosine, got 'onecycle'"),
    ({"train.lr_schedule": "cosine", "train.milestones": [], "train.warmup_epochs": -1},
     "train.warmup_epochs: must be >= 0, got -1"),
    ({"train.warmup_epochs": 1, "train.milestones": [1]},
     "train.warmup_epochs: 1 warm-up epoch(s) need train.lr_schedule=cosine"),
    ({"train.lr_schedule": "cosine", "train.milestones": [1]},
     "train.milestones: [1] are the step schedule's; train.lr_schedule=cosine takes train.milestones=[]"),
    ({"train.lr_schedule": "cosine", "train.milestones": [], "train.warmup_epochs": 2, "train.epochs": 2},
     "train.warmup_epochs: 2 warm-up epoch(s) leave no cosine epoch in train.epochs=2"),
])
def test_bad_schedule_settings_are_one_line_errors(overrides, message):
    cfg = apply_overrides(profile_config("smoke"), overrides)
    with pytest.raises(ConfigValueError) as info:
        check_config_values(cfg, check_device=False)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_good_schedule_settings_pass():
    check_config_values(apply_overrides(profile_config("study"), {"train.lr_schedule": "cosine",
                                                                  "train.milestones": [],
                                                                  "train.warmup_epochs": 2}), check_device=False)
    check_config_values(profile_config("study"), check_device=False)


# ---------------------------------------------------------------------------
# Run folders: fingerprints, resume with another number of epochs
# ---------------------------------------------------------------------------
def test_fingerprints_of_existing_runs_do_not_change():
    """The fingerprints of the step-schedule configs as commit 83474bf (before ``train.lr_schedule``) computed
    them: the new fields at their defaults are left out, so older run folders still resume."""
    assert {p: config_fingerprint(profile_config(p)) for p in ("smoke", "cpu", "study", "paper")} == {
        "smoke": "c914ccd281a81ba1", "cpu": "e7109b31bf9bde5a", "study": "884a893a33cdb2a4",
        "paper": "bc00c05c0328e8fa"}
    study_long_nokd = apply_overrides(profile_config("study"), {"train.milestones": [24], "distill.method": "nokd",
                                                                 "train.mixed_precision": False})
    assert config_fingerprint(study_long_nokd) == "fa783e29cd690d4b"


def test_a_cosine_fingerprint_holds_its_epochs():
    step = profile_config("smoke")
    assert config_fingerprint(step) == config_fingerprint(apply_overrides(step, {"train.epochs": 9}))
    cosine = apply_overrides(step, {"train.lr_schedule": "cosine", "train.milestones": []})
    assert config_fingerprint(cosine) != config_fingerprint(apply_overrides(step, {"train.milestones": []}))
    assert config_fingerprint(cosine) != config_fingerprint(apply_overrides(cosine, {"train.epochs": 9}))
    assert config_fingerprint(cosine) != config_fingerprint(apply_overrides(cosine, {"train.warmup_epochs": 1}))


def _fake_run(folder, cfg, epochs_done):
    from distilvpr_lib.engine.train.checkpoint import CHECKPOINT_FORMAT

    (folder / "checkpoints").mkdir(parents=True)
    write_json(folder / "config.json", cfg.to_dict())
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": epochs_done, "run": {"dataset_fingerprint": "a" * 64}},
               folder / "checkpoints" / "last.pt")
    return folder


def test_a_cosine_run_resumes_only_with_its_own_epochs(tmp_path):
    cosine = apply_overrides(profile_config("smoke"), {"train.lr_schedule": "cosine", "train.milestones": [],
                                                       "train.epochs": 4})
    run = _fake_run(tmp_path / "cosine", cosine, 2)
    check_resumable(cosine, run, True, dataset_fingerprint="a" * 64)  # the same run resumes
    with pytest.raises(RunConfigMismatchError) as info:
        check_resumable(apply_overrides(cosine, {"train.epochs": 8}), run, True, dataset_fingerprint="a" * 64)
    message = str(info.value)
    assert "\n" not in message
    assert "train.epochs 4 → 8 (train.lr_schedule=cosine anneals to 0 at train.epochs" in message
    # a step run may still be extended
    step = apply_overrides(profile_config("smoke"), {"train.epochs": 4})
    check_resumable(apply_overrides(step, {"train.epochs": 8}), _fake_run(tmp_path / "step", step, 2), True,
                    dataset_fingerprint="a" * 64)


def test_list_config_shows_the_schedule(capsys):
    from distilvpr_lib.cli import main

    assert main(["list", "config", "--profile", "smoke"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "step" in lines["train.lr_schedule"] and "cosine" in lines["train.lr_schedule"]
    assert "train.warmup_epochs" in lines and " 0 " in lines["train.warmup_epochs"]
