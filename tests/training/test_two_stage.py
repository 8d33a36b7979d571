import numpy as np
import torch

from sidrec.training.loop import epoch_order, lr_factor


def test_epoch_order_all_examples_is_a_permutation():
    users = np.array([0, 0, 0, 1, 2, 2])
    order = epoch_order(users, 0, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(6))


def test_epoch_order_per_user_draws_within_each_user():
    users = np.array([0, 0, 0, 2, 2, 3])  # user 1 has no training prefix
    order = epoch_order(users, 4, torch.Generator().manual_seed(0))
    assert len(order) == 12
    picked = users[order.numpy()]
    assert np.bincount(picked, minlength=4).tolist() == [4, 0, 4, 4]
    again = epoch_order(users, 4, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_lr_schedule_warmup_then_decay():
    assert lr_factor(0, 100, 10, "cosine") == 0.1
    assert lr_factor(9, 100, 10, "cosine") == 1.0
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert abs(lr_factor(100, 100, 10, "cosine")) < 1e-9
    assert lr_factor(50, 100, 10, "constant") == 1.0
    assert lr_factor(39, 100, 10, "inverse_sqrt") == 0.5
