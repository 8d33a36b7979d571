"""The one epoch loop with a minimal step: the learning-rate schedule reaches every optimiser group."""

import numpy as np
import torch
from torch import nn

from sidrec.rundir import TrainingDir
from sidrec.training.loop import LoopConfig, TrainStep, lr_factor, train_epochs


class TwoGroups(TrainStep):
    """A linear model fitted to a constant, its weight and bias in optimiser groups of different rates."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.module = nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD([{"params": [self.module.weight], "lr": 0.1},
                                          {"params": [self.module.bias], "lr": 0.01}])
        self.users = np.arange(8)  # one example per user
        self.lengths = torch.ones(8, dtype=torch.long)
        self.seen: list[list[float]] = []  # the rate of every group at each step

    def losses(self, idx, step):
        self.seen.append([g["lr"] for g in self.optimizer.param_groups])
        return {"total": (self.module(torch.ones(len(idx), 2)) - 1).pow(2).mean()}

    def validate(self):
        return {"ndcg@10": 0.0}

    def write_best(self, folder, epoch, metrics):
        folder.mkdir(parents=True, exist_ok=True)


def test_the_schedule_scales_every_optimiser_group(tmp_path):
    cfg = LoopConfig(epochs=3, batch_size=2, patience=10, warmup_steps=4, scheduler="cosine")
    step = TwoGroups()
    res = train_epochs(step, cfg, TrainingDir(tmp_path), seed=0, progress=False)
    assert res.finished and res.steps == 12
    factors = [lr_factor(s, 12, 4, "cosine") for s in range(12)]
    assert step.seen == [[0.1 * f, 0.01 * f] for f in factors]  # warm-up and decay in both groups
