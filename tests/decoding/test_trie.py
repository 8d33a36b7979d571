import itertools

import pytest
import torch

from sidrec.decoding.trie import SidTrie

# Items 0..3; items 0 and 1 collide on the learned codes (0, 1) and differ only in the dedup token.
HAND_SIDS = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0], [2, 1, 0]])
HAND_SIZES = [3, 2, 2]


def unique_random_sids(num_items: int, level_sizes: list[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sids = torch.stack([torch.randint(k, (3 * num_items,), generator=gen) for k in level_sizes], dim=1)
    sids = torch.unique(sids, dim=0)
    return sids[torch.randperm(len(sids), generator=gen)[:num_items]]


def test_valid_next_hand_made():
    trie = SidTrie(HAND_SIDS, HAND_SIZES)
    root = trie.valid_next(torch.zeros(1, dtype=torch.long), level=0)
    assert root.tolist() == [[True, False, True]]

    level1 = trie.valid_next(trie.encode(torch.tensor([[0], [1], [2]])), level=1)
    assert level1.tolist() == [[False, True], [False, False], [True, True]]

    prefixes = torch.tensor([[0, 1], [2, 0], [2, 1], [0, 0], [1, 1]])
    level2 = trie.valid_next(trie.encode(prefixes), level=2)
    assert level2.tolist() == [[True, True], [True, False], [True, False], [False, False], [False, False]]


def test_children_are_padded_to_max_children():
    trie = SidTrie(HAND_SIDS, HAND_SIZES)
    codes, valid = trie.children(trie.encode(torch.tensor([[0, 1], [2, 0], [1, 0]])), level=2)
    assert trie.max_children == [2, 2, 2]
    assert codes.tolist() == [[0, 1], [0, -1], [-1, -1]]
    assert valid.tolist() == [[True, True], [True, False], [False, False]]


def test_items_maps_complete_sids_and_rejects_others():
    trie = SidTrie(HAND_SIDS, HAND_SIZES)
    assert trie.items(trie.encode(HAND_SIDS)).tolist() == [0, 1, 2, 3]
    queries = torch.tensor([[2, 1, 0], [0, 0, 0], [2, 1, 1], [0, 1, 1]])
    assert trie.items(trie.encode(queries)).tolist() == [3, -1, -1, 1]


def test_extend_matches_encode():
    trie = SidTrie(HAND_SIDS, HAND_SIZES)
    keys = trie.extend(trie.encode(HAND_SIDS[:, :2]), HAND_SIDS[:, 2], level=2)
    assert torch.equal(keys, trie.encode(HAND_SIDS))


def test_valid_next_matches_brute_force_on_random_catalogue():
    level_sizes = [5, 3, 7, 4]
    sids = unique_random_sids(60, level_sizes, seed=1)
    trie = SidTrie(sids, level_sizes)
    rows = [tuple(r) for r in sids.tolist()]
    for level, k in enumerate(level_sizes):
        # Every prefix of this length over the full code space, present in the catalogue or not.
        grid = list(itertools.product(*[range(s) for s in level_sizes[:level]]))
        prefixes = torch.tensor(grid, dtype=torch.long).view(len(grid), level)
        allowed = trie.valid_next(trie.encode(prefixes), level)
        expected = torch.zeros(len(prefixes), k, dtype=torch.bool)
        index = {tuple(p): m for m, p in enumerate(prefixes.tolist())}
        for row in rows:
            expected[index[row[:level]], row[level]] = True
        assert torch.equal(allowed, expected), f"level {level}"


def test_duplicate_sids_rejected():
    sids = torch.tensor([[0, 1, 0], [2, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="items 0 and 2 share the SID"):
        SidTrie(sids, HAND_SIZES)


@pytest.mark.parametrize("bad, level", [((0, 2, 0), 1), ((-1, 0, 0), 0), ((1, 1, 5), 2)])
def test_out_of_range_codes_rejected_naming_level(bad, level):
    sids = torch.tensor([[0, 1, 0], list(bad)])
    with pytest.raises(ValueError, match=f"sids\\[1, {level}\\].*level {level}"):
        SidTrie(sids, HAND_SIZES)


def test_bad_shapes_and_sizes_rejected():
    with pytest.raises(ValueError, match="2 levels given"):
        SidTrie(HAND_SIDS, [3, 2])
    with pytest.raises(ValueError, match="int64"):
        SidTrie(torch.zeros(1, 3, dtype=torch.long), [2**22, 2**22, 2**22])
    with pytest.raises(ValueError, match="integer"):
        SidTrie(HAND_SIDS.float(), HAND_SIZES)
    with pytest.raises(ValueError, match="empty"):
        SidTrie(torch.zeros(0, 3, dtype=torch.long), HAND_SIZES)


def test_largest_int64_radix_accepted():
    # 3 * 2**61 < 2**63: the full key range still fits int64.
    sids = torch.tensor([[2, 2**61 - 1], [0, 0]])
    trie = SidTrie(sids, [3, 2**61])
    assert trie.items(trie.encode(sids)).tolist() == [0, 1]
    codes, valid = trie.children(trie.encode(sids[:, :1]), level=1)
    assert codes.tolist() == [[2**61 - 1], [0]] and valid.all()


def test_memory_linear_in_items_and_independent_of_level_sizes():
    depth = 3
    for level_sizes in ([8, 8, 8], [1000, 1000, 1000]):
        sizes = {}
        for n in (200, 400):
            trie = SidTrie(unique_random_sids(n, level_sizes, seed=n), level_sizes)
            tensors = [trie.sids, trie.item_order, *trie.level_keys]
            elements = sum(t.numel() for t in tensors)
            # SID table + item order + at most N keys per level.
            assert elements <= (2 * depth + 1) * n
            assert trie.nbytes == 8 * elements
            sizes[n] = elements
        assert sizes[400] <= 2 * sizes[200] + 2 * depth


def test_to_device_moves_every_tensor():
    trie = SidTrie(HAND_SIDS, HAND_SIZES)
    assert trie.to("cpu") is trie
    moved = trie.to("meta")
    assert moved.device.type == "meta"
    assert all(t.device.type == "meta" for t in [moved.sids, moved.item_order, *moved.level_keys])
    assert trie.device.type == "cpu"
