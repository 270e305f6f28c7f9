"""DINO loss, center update and teacher temperature: naive loops, lightly, numpy, gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tolerance import rounding

from twinview.losses.dino import (
    dino_loss,
    teacher_probabilities,
    teacher_temperature,
    update_center,
)

F64 = torch.float64
RTOL = 1e-10


def logits(crops: int, batch: int, dim: int, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, dim, generator=g, dtype=F64) for _ in range(crops)]


def naive_dino_loss(student, teacher, center, student_temp, teacher_temp) -> float:
    """The paper's formula with Python loops over crop pairs, samples and prototypes."""
    c = [float(x) for x in center]
    total, terms = 0.0, 0
    for i, t_crop in enumerate(teacher):
        for j, s_crop in enumerate(student):
            if i == j:
                continue
            pair = 0.0
            for b in range(t_crop.shape[0]):
                t = [(float(x) - ck) / teacher_temp for x, ck in zip(t_crop[b], c)]
                t_max = max(t)
                z_t = sum(math.exp(x - t_max) for x in t)
                p = [math.exp(x - t_max) / z_t for x in t]
                s = [float(x) / student_temp for x in s_crop[b]]
                s_max = max(s)
                log_z_s = s_max + math.log(sum(math.exp(x - s_max) for x in s))
                pair += -sum(pk * (sk - log_z_s) for pk, sk in zip(p, s))
            total += pair / t_crop.shape[0]
            terms += 1
    return total / terms


@pytest.mark.parametrize("num_student", [2, 3, 6])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("temps", [(0.1, 0.04), (0.1, 0.07), (0.5, 1.0)])
def test_matches_naive_loop(num_student, batch, temps):
    student_temp, teacher_temp = temps
    student = logits(num_student, batch, 7, seed=num_student * 10 + batch)
    teacher = logits(2, batch, 7, seed=99 + batch)
    center = 0.3 * torch.randn(7, generator=torch.Generator().manual_seed(3), dtype=F64)
    got = dino_loss(student, teacher, center, student_temp=student_temp, teacher_temp=teacher_temp)
    want = naive_dino_loss(student, teacher, center, student_temp, teacher_temp)
    assert got.dtype == F64 and got.ndim == 0
    assert got.item() == pytest.approx(want, rel=RTOL, abs=RTOL)


def test_one_teacher_crop_and_a_center_shift_per_row_do_not_matter():
    """G = 1 uses V - 1 pairs; adding a constant to a row of logits leaves the softmaxes alone."""
    student, teacher = logits(3, 4, 6, seed=1), logits(1, 4, 6, seed=2)
    center = torch.zeros(6, dtype=F64)
    got = dino_loss(student, teacher, center)
    assert got.item() == pytest.approx(
        naive_dino_loss(student, teacher, center, 0.1, 0.04), rel=RTOL
    )
    shifted = dino_loss([s + 5.0 for s in student], [t - 2.0 for t in teacher], center + 1.0)
    assert shifted.item() == pytest.approx(got.item(), rel=1e-12)


def test_gradcheck_student_and_no_gradient_into_teacher():
    student = [s.requires_grad_() for s in logits(4, 3, 5, seed=7)]
    teacher = [t.requires_grad_() for t in logits(2, 3, 5, seed=8)]
    center = torch.randn(5, generator=torch.Generator().manual_seed(9), dtype=F64)

    def f(*s):
        return dino_loss(list(s), teacher, center, student_temp=0.2, teacher_temp=0.1)

    assert torch.autograd.gradcheck(f, tuple(student), eps=1e-6, atol=1e-8)
    f(*student).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_low_precision_inputs_are_computed_in_float32():
    student, teacher = logits(4, 8, 32, seed=4, scale=3.0), logits(2, 8, 32, seed=5, scale=3.0)
    center = torch.zeros(32, dtype=F64)
    ref = dino_loss(student, teacher, center)
    got = dino_loss(
        [s.to(torch.bfloat16) for s in student],
        [t.to(torch.bfloat16) for t in teacher],
        center.to(torch.float32),
    )
    assert got.dtype == torch.float32
    # Only the bf16 rounding of the inputs remains: each logit moves by eps/2 of the largest,
    # then / 0.1 (student) and / 0.04 (teacher); a cross-entropy of softmaxes by ~2x that.
    scale = max(float(t.abs().max()) for t in student + teacher)
    tol = rounding(torch.bfloat16, ulps=1) * scale * (1 / 0.1 + 1 / 0.04)
    assert got.item() == pytest.approx(ref.item(), rel=0, abs=tol)


def test_rejects_bad_crop_counts_and_shapes():
    s, t, c = logits(2, 3, 4, seed=0), logits(3, 3, 4, seed=1), torch.zeros(4, dtype=F64)
    with pytest.raises(ValueError, match="teacher crops <= student crops"):
        dino_loss(s, t, c)
    with pytest.raises(ValueError, match="at least two crops"):
        dino_loss(s[:1], t[:1], c)
    with pytest.raises(ValueError, match="shapes"):
        dino_loss([s[0], s[1][:2]], t[:2], c)


def test_update_center_is_the_ema_of_the_batch_mean_in_place():
    teacher = logits(2, 5, 6, seed=3)
    center = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=F64)
    old = center.clone()
    out = update_center(center, teacher, momentum=0.9)
    assert out is center
    mean = torch.cat(teacher).mean(dim=0)
    torch.testing.assert_close(center, 0.9 * old + 0.1 * mean, rtol=1e-14, atol=1e-15)
    # One (N, K) tensor is the same as the list of crops.
    again = old.clone()
    update_center(again, torch.cat(teacher), momentum=0.9)
    torch.testing.assert_close(again, center, rtol=0, atol=0)


def test_teacher_probabilities_are_centred_sharpened_and_detached():
    t = logits(1, 4, 6, seed=5)[0].requires_grad_()
    c = torch.randn(6, generator=torch.Generator().manual_seed(6), dtype=F64)
    p = teacher_probabilities(t, c, 0.04)
    assert not p.requires_grad
    torch.testing.assert_close(p, torch.softmax((t.detach() - c) / 0.04, dim=1))


# --- teacher temperature --------------------------------------------------------------------


def test_teacher_temperature_follows_the_official_linspace_per_epoch():
    epochs, warmup_epochs = 40, 30
    official = np.concatenate(
        (np.linspace(0.04, 0.07, warmup_epochs), np.ones(epochs - warmup_epochs) * 0.07)
    )
    for e in range(epochs):
        got = teacher_temperature(e, warmup=0.04, final=0.07, warmup_epochs=warmup_epochs)
        assert got == pytest.approx(official[e], rel=1e-14)
    assert teacher_temperature(0.5, warmup=0.04, final=0.07, warmup_epochs=3) == pytest.approx(
        0.0475
    )
    assert teacher_temperature(123, warmup_epochs=0, final=0.05) == 0.05
    assert teacher_temperature(0, warmup_epochs=0, final=0.05) == 0.05
    assert teacher_temperature(0.9, warmup_epochs=1, warmup=0.03, final=0.05) == 0.03
    assert teacher_temperature(1, warmup_epochs=1, warmup=0.03, final=0.05) == 0.05
    with pytest.raises(ValueError):
        teacher_temperature(-1)


# --- against lightly ------------------------------------------------------------------------


def _lightly_loss(dim: int, **kwargs):
    lightly_loss = pytest.importorskip("lightly.loss")
    return lightly_loss.DINOLoss(output_dim=dim, **kwargs).to(F64)


@pytest.mark.parametrize(
    "teacher_temp,tol",
    # 1/16 and 1/8 are exact in float32 (lightly wraps the temperature in a float32 tensor), so
    # only float64 rounding remains; 0.04 is not, which moves lightly's loss by ~1e-8.
    [(0.0625, 1e-12), (0.125, 1e-12), (0.04, 1e-6)],
)
def test_matches_lightly_loss_and_center_over_two_steps(teacher_temp, tol):
    dim = 16
    ref = _lightly_loss(dim, student_temp=0.1, center_momentum=0.9, warmup_teacher_temp_epochs=1)
    center = torch.zeros(dim, dtype=F64)
    for step in range(2):  # the second step uses the center the first one left
        student = logits(6, 5, dim, seed=10 + step, scale=2.0)
        teacher = logits(2, 5, dim, seed=20 + step, scale=2.0)
        want = ref(teacher, student, teacher_temp=teacher_temp)  # lightly: teacher first
        got = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=teacher_temp)
        update_center(center, teacher, momentum=0.9)
        assert got.item() == pytest.approx(want.item(), rel=tol)
        torch.testing.assert_close(center, ref.center.reshape(-1), rtol=1e-12, atol=1e-14)
    assert center.abs().sum() > 0


def test_matches_lightly_teacher_temperature_schedule():
    ref = _lightly_loss(
        8, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30
    )
    for epoch in range(35):
        want = ref.teacher_temp_schedule[epoch] if epoch < 30 else ref.teacher_temp
        got = teacher_temperature(epoch, warmup=0.04, final=0.07, warmup_epochs=30)
        assert got == pytest.approx(float(want), rel=1e-6)  # lightly's schedule is float32
