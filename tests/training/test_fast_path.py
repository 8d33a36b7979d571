"""The CPU fast path against the simple path: length-bucketed batches trimmed to their longest history, sorted
decoding batches, and when bf16 autocast is used."""

import numpy as np
import torch
import torch.nn.functional as F

from sidrec.data.splits import Examples
from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import generate_rankings, history_sids, model_inputs, trim_padding
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.training.loop import bucket_by_length, epoch_order
from sidrec.utils import bf16_autocast

LEVELS = [8, 8, 4]


def _setup(seed: int = 0, n_items: int = 60, n_examples: int = 96, max_history: int = 12):
    g = torch.Generator().manual_seed(seed)
    cfg = TigerConfig(level_sizes=LEVELS, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=2,
                      num_decoder_layers=2, dropout=0.0, user_buckets=10, max_history=max_history)
    model = Tiger(cfg, generator=g).eval()
    codes = torch.unique(torch.stack([torch.randint(0, k, (4 * n_items,), generator=g) for k in LEVELS], -1), dim=0)
    item_sids = codes[torch.randperm(len(codes), generator=g)[:n_items]]  # (N, Lc) distinct
    rng = np.random.default_rng(seed)
    history = np.full((n_examples, max_history), -1, np.int64)  # left-padded, lengths 1..max_history
    for i, n in enumerate(rng.integers(1, max_history + 1, n_examples)):
        history[i, max_history - n :] = rng.integers(0, n_items, n)
    examples = Examples(history, rng.integers(0, n_items, n_examples), np.arange(n_examples))
    return model, item_sids, examples


def _per_example_loss(model, item_sids, examples, rows, trim: bool) -> torch.Tensor:
    hist = torch.as_tensor(examples.history[rows])
    users = torch.as_tensor(examples.user[rows])
    if trim:
        ids, mask = model_inputs(model, item_sids, hist, users)
    else:
        ids, mask = model.encoder_inputs(history_sids(item_sids, hist), users)
    target = item_sids[torch.as_tensor(examples.target[rows])]
    logits = model(ids, mask, target)
    return sum(F.cross_entropy(lg, target[:, lv], reduction="none") for lv, lg in enumerate(logits)) / len(LEVELS)


def test_trim_padding_keeps_the_longest_history():
    h = torch.tensor([[-1, -1, -1, 4], [-1, -1, 2, 3], [-1, -1, -1, 7]])
    assert trim_padding(h).tolist() == [[-1, 4], [2, 3], [-1, 7]]
    assert trim_padding(torch.tensor([[1, 2]])).tolist() == [[1, 2]]


def test_bucketed_trimmed_batches_give_each_example_the_same_loss():
    """Bucketing changes which examples share a batch and trimming the width, never an example's loss."""
    model, item_sids, ex = _setup()
    gen = torch.Generator().manual_seed(3)
    order = epoch_order(ex.user, 0, gen)
    lengths = torch.as_tensor((ex.history >= 0).sum(1))
    bucketed = bucket_by_length(order, lengths, 16, gen, pool_batches=3)
    simple = torch.empty(len(ex.target))
    fast = torch.empty(len(ex.target))
    with torch.no_grad():
        for b in range(0, len(order), 16):
            rows = order[b : b + 16].numpy()
            simple[rows] = _per_example_loss(model, item_sids, ex, rows, trim=False)
            rows = bucketed[b : b + 16].numpy()
            fast[rows] = _per_example_loss(model, item_sids, ex, rows, trim=True)
    torch.testing.assert_close(fast, simple, rtol=1e-5, atol=1e-5)


def test_bucket_by_length_is_a_seeded_permutation_of_similar_lengths():
    lengths = torch.as_tensor(np.random.default_rng(0).integers(1, 21, 1000))
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    a = bucket_by_length(order, lengths, 32, torch.Generator().manual_seed(1), pool_batches=8)
    b = bucket_by_length(order, lengths, 32, torch.Generator().manual_seed(1), pool_batches=8)
    assert torch.equal(a, b)
    assert sorted(a.tolist()) == list(range(1000))  # every example once
    last_pool = order.split(256)[-1]  # 232 examples: 7 full batches + a partial one of 8, which stays last
    assert torch.equal(a[-8:], last_pool[torch.argsort(lengths[last_pool], stable=True)][-8:])
    spread = [int(lengths[chunk].max() - lengths[chunk].min()) for chunk in a.split(32)]
    random_spread = [int(lengths[chunk].max() - lengths[chunk].min()) for chunk in order.split(32)]
    assert np.mean(spread) < 0.25 * np.mean(random_spread)
    # padding the trimmed batches still carry, relative to the width of a random batch
    width = sum(len(c) * int(lengths[c].max()) for c in a.split(32))
    random_width = sum(len(c) * int(lengths[c].max()) for c in order.split(32))
    assert width < 0.7 * random_width


def test_sorted_decoding_gives_the_rows_of_dataset_order():
    """Decoding in order of history length (and trimmed) returns, row for row, the simple path's lists (fp32)."""
    model, item_sids, ex = _setup(seed=1, n_examples=40)
    trie = SidTrie(item_sids, LEVELS)
    fast = generate_rankings(model, ex, item_sids, trie, beam_size=10, topk=5, batch_size=8, progress=False,
                             bf16=False)
    simple = []
    for start in range(0, len(ex.target), 8):
        hist = torch.as_tensor(ex.history[start : start + 8])
        ids, mask = model.encoder_inputs(history_sids(item_sids, hist), torch.as_tensor(ex.user[start : start + 8]))
        simple.append(constrained_beam_search(model, ids, mask, trie, beam_size=10, topk=5).items.numpy())
    np.testing.assert_array_equal(fast, np.concatenate(simple))


def test_native_bf16_is_amx_or_avx512_bf16(tmp_path):
    from sidrec.utils import cpu_bf16_isa

    for flags, isa in (("fpu avx2 avx512f", None), ("fpu avx512f avx512_bf16", "avx512_bf16"),
                       ("fpu avx512_bf16 amx_bf16 amx_tile", "amx_bf16")):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_bf16_isa(str(tmp_path / "cpuinfo")) == isa
    assert cpu_bf16_isa(str(tmp_path / "missing")) is None


def test_bf16_autocast_only_where_it_is_fast(monkeypatch):
    import sidrec.utils as utils

    monkeypatch.setattr(utils, "cpu_has_bf16", lambda: False)
    assert not bf16_autocast(torch.device("cpu"), True)
    monkeypatch.setattr(utils, "cpu_has_bf16", lambda: True)
    assert bf16_autocast(torch.device("cpu"), True)
    assert not bf16_autocast(torch.device("cpu"), False)
    assert bf16_autocast(torch.device("cuda"), True)


def test_sasrec_loss_is_the_same_on_trimmed_histories():
    """SASRec's fast path (``sasrec.train.length_buckets``): cutting a batch to its longest history changes no loss."""
    from sidrec.models.sasrec import SASRec, SASRecConfig

    _, _, ex = _setup(seed=2, n_examples=32)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=60, d_model=16, num_layers=2, num_heads=2, max_len=12, dropout=0.0)).eval()
    hist, target = torch.as_tensor(ex.history), torch.as_tensor(ex.target)
    short = hist[(hist >= 0).sum(1) <= 5]  # a batch of short histories: trimming removes most columns
    with torch.no_grad():
        torch.testing.assert_close(model.scores(trim_padding(short)), model.scores(short), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.loss(trim_padding(hist), target), model.loss(hist, target))
    assert trim_padding(short).shape[1] <= 5
