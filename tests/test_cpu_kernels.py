"""CPU kernel choices of the engine (issue 26): the multi-tensor Adam is bit-identical to torch's per-parameter
Adam, fused Adam and channels-last are opt-in settings of a run, and the evaluation embeds with the run's kernels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.engine.evaluation.embed import compute_embeddings
from distilvpr_lib.engine.runs.run_evaluation import evaluation_kernels
from distilvpr_lib.engine.train.devices import channels_last_enabled
from distilvpr_lib.engine.train.loop import Trainer
from distilvpr_lib.engine.train.objectives import StudentObjective
from distilvpr_lib.engine.train.optim import build_optimizer, build_scheduler, student_parameter_groups


class ConvNet(nn.Module):
    """(B, 3, H, W) images -> (B, 8): two convolutions, batch norm, pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.image_net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                       nn.Conv2d(6, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                       nn.Linear(8, 8))

    def forward(self, batch):
        images = batch["images"] if isinstance(batch, dict) else batch
        return {"embedding": self.image_net(images)}


def _adam_weights(make_optimizer, steps: int = 4) -> list[torch.Tensor]:
    """Weights of ConvNet after ``steps`` Adam updates with the same seeded gradients."""
    torch.manual_seed(0)
    model = ConvNet()
    optimizer = make_optimizer(model)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_default_adam_is_foreach_and_bit_identical_to_the_per_parameter_loop():
    cfg = profile_config("smoke")
    optimizer = build_optimizer(student_parameter_groups(ConvNet(), cfg.train), cfg.train)
    assert optimizer.param_groups[0]["foreach"] is True and not optimizer.param_groups[0]["fused"]
    assert cfg.train.weight_decay > 0  # the L2 term is part of what must agree
    loop = _adam_weights(lambda m: torch.optim.Adam(student_parameter_groups(m, cfg.train),
                                                    weight_decay=cfg.train.weight_decay, foreach=False))
    ours = _adam_weights(lambda m: build_optimizer(student_parameter_groups(m, cfg.train), cfg.train))
    assert all(torch.equal(a, b) for a, b in zip(loop, ours))
    # the comparison can fail: another learning rate moves the weights
    other = _adam_weights(lambda m: torch.optim.Adam(m.parameters(), lr=2 * cfg.train.image_lr,
                                                     weight_decay=cfg.train.weight_decay, foreach=False))
    assert not all(torch.equal(a, b) for a, b in zip(loop, other))


def test_fused_adam_is_opt_in_and_agrees_to_rounding():
    cfg = apply_overrides(profile_config("smoke"), {"train.fused_adam": True})
    assert profile_config("smoke").train.fused_adam is False
    optimizer = build_optimizer(student_parameter_groups(ConvNet(), cfg.train), cfg.train)
    assert optimizer.param_groups[0]["fused"] is True
    loop = _adam_weights(lambda m: torch.optim.Adam(student_parameter_groups(m, cfg.train),
                                                    weight_decay=cfg.train.weight_decay, foreach=False))
    fused = _adam_weights(lambda m: build_optimizer(student_parameter_groups(m, cfg.train), cfg.train))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(loop, fused))


def test_resumed_optimizer_keeps_the_checkpoints_implementation():
    """A checkpoint written before foreach was the default resumes with torch's loop (same rounding as before)."""
    cfg = profile_config("smoke")
    old = torch.optim.Adam(ConvNet().parameters(), weight_decay=cfg.train.weight_decay)  # foreach=None
    new = build_optimizer(student_parameter_groups(ConvNet(), cfg.train), cfg.train)
    new.load_state_dict(old.state_dict())
    assert new.param_groups[0]["foreach"] is None


@pytest.mark.parametrize("channels_last, channels_last_cpu, device, expected", [
    (True, False, "cpu", False),   # the default: NCHW on the CPU (as before issue 26)
    (True, True, "cpu", True),
    (False, True, "cpu", False),   # channels_last is the master switch
    (True, False, "cuda", True),   # CUDA: channels_last alone, as before
    (False, True, "cuda", False),
])
def test_channels_last_enabled(channels_last, channels_last_cpu, device, expected):
    cfg = apply_overrides(profile_config("smoke"), {"train.channels_last": channels_last,
                                                    "train.channels_last_cpu": channels_last_cpu})
    assert channels_last_enabled(cfg.train, device) is expected


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("channels_last_cpu", [False, True])
def test_trainer_puts_model_and_images_in_the_configured_memory_format(channels_last_cpu, tmp_path):
    cfg = apply_overrides(profile_config("smoke"), {"train.channels_last_cpu": channels_last_cpu})
    torch.manual_seed(0)
    model = ConvNet()
    optimizer = build_optimizer(student_parameter_groups(model, cfg.train), cfg.train)
    trainer = Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train), [],
                      cfg.train, tmp_path, progress=False, tensorboard=False)
    trainer.prepare()
    assert _is_nhwc(model.image_net[0].weight) is channels_last_cpu
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(_is_nhwc(args[0]["images"])))
    place = torch.arange(8) // 2
    same = place[:, None] == place[None, :]
    batch = {"images": torch.randn(8, 3, 12, 16), "positives_mask": same & ~torch.eye(8, dtype=torch.bool),
             "negatives_mask": ~same}
    result = trainer.forward_backward(batch)
    assert seen == [channels_last_cpu] and torch.isfinite(result.total)
    assert all(p.grad is not None for p in model.parameters())


def test_compute_embeddings_with_channels_last_and_autocast_agree_with_float32():
    torch.manual_seed(0)
    model = ConvNet().eval()
    images = torch.randn(6, 3, 12, 16)
    loader = torch.utils.data.DataLoader([{"images": images[i]} for i in range(6)], batch_size=4)
    reference = compute_embeddings(model, loader)
    with torch.no_grad():
        assert np.array_equal(reference, model({"images": images})["embedding"].numpy())
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(_is_nhwc(args[0]["images"])))
    nhwc = compute_embeddings(model.to(memory_format=torch.channels_last), loader, channels_last=True)
    hook.remove()
    assert seen == [True, True]
    np.testing.assert_allclose(nhwc, reference, rtol=1e-4, atol=1e-5)
    half = compute_embeddings(model, loader, channels_last=True, autocast_dtype=torch.bfloat16)
    assert half.dtype == np.float32 and half.shape == reference.shape
    np.testing.assert_allclose(half, reference, rtol=0.05, atol=0.05)  # bfloat16 has 8 bits of mantissa
    assert not np.array_equal(half, reference)  # the autocast did run


def test_evaluation_kernels_follow_the_run_settings():
    study = profile_config("study")
    assert study.train.mixed_precision and not study.train.eval_mixed_precision
    assert evaluation_kernels(study, "cpu") == (study.train.channels_last_cpu, None)  # float32 unless asked
    cfg = apply_overrides(study, {"train.eval_mixed_precision": True, "train.channels_last_cpu": True})
    assert evaluation_kernels(cfg, "cpu") == (True, torch.bfloat16)
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=False))
    assert evaluation_kernels(off, "cpu") == (True, None)


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_autocast_on_a_cpu_without_bfloat16_kernels_warns(native, tmp_path, monkeypatch, caplog):
    from distilvpr_lib.engine.train import loop

    monkeypatch.setattr(loop, "cpu_has_native_bfloat16", lambda: native)
    cfg = profile_config("study")
    assert cfg.train.mixed_precision and cfg.train.amp_dtype == "bfloat16"
    model = ConvNet()
    optimizer = build_optimizer(student_parameter_groups(model, cfg.train), cfg.train)
    with caplog.at_level("WARNING", logger=loop.__name__):
        Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train), [],
                cfg.train, tmp_path, progress=False, tensorboard=False)
    warned = [r for r in caplog.records if "without bfloat16 kernels" in r.getMessage()]
    assert bool(warned) is (not native)


def test_cpu_has_native_bfloat16_answers_a_bool():
    from distilvpr_lib.engine.train.devices import cpu_has_native_bfloat16

    assert isinstance(cpu_has_native_bfloat16(), bool)
