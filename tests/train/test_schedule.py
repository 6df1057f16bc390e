"""The learning-rate schedule (train/optim.py): the shapes transformers' (and so TRL's) schedulers give."""

from __future__ import annotations

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from sftlab.config import TrainConfig
from sftlab.train.optim import lr_factor


def hf_factors(make, total: int, warmup: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("scheduler", "make"), [("cosine", get_cosine_schedule_with_warmup),
                                                 ("linear", get_linear_schedule_with_warmup)])  # fmt: skip
@pytest.mark.parametrize(("total", "warmup"), [(10, 0), (63, 0), (25, 5)])
def test_decay_matches_transformers_and_the_last_step_still_updates(scheduler, make, total, warmup):
    cfg = TrainConfig(scheduler=scheduler, warmup_steps=warmup)
    ours = [lr_factor(s, total, cfg) for s in range(total)]
    theirs = hf_factors(make, total, warmup)
    assert ours[warmup:] == pytest.approx(theirs[warmup:], abs=1e-12)  # the decay, step for step
    assert ours[-1] > 0  # a step at lr 0 would be spent on nothing
    # warm-up: from 1/warmup up to the peak on its last step (transformers starts at 0, a step without an update)
    assert ours[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])


def test_min_lr_ratio_is_the_floor_the_decay_approaches():
    cfg = TrainConfig(scheduler="cosine", min_lr_ratio=0.1)
    ours = [lr_factor(s, 20, cfg) for s in range(20)]
    assert ours[0] == 1.0 and all(a > b > 0.1 for a, b in zip(ours, ours[1:]))
    assert lr_factor(20, 20, cfg) == pytest.approx(0.1)  # reached after the last step
