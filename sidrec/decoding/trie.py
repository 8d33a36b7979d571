"""A trie over the catalogue's semantic IDs, stored as sorted prefix keys so that memory is linear in the items.

Every prefix (c_0, ..., c_l) of a SID is encoded as one int64 mixed-radix key

    key(empty) = 0,    key(c_0 .. c_l) = key(c_0 .. c_{l-1}) * K_l + c_l,

so the children of a prefix with key p at level l have keys in [p * K_l, (p + 1) * K_l). For each level the trie
keeps the sorted unique keys of all catalogue prefixes of that length; the children of p are then one contiguous
run of that array, found with two binary searches (`torch.searchsorted`), for many prefixes at once.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

INT64_MAX = 2**63 - 1


class SidTrie:
    """Trie of the valid semantic IDs of a catalogue, for prefix-constrained decoding.

    Memory is O(N * Lc) whatever the level sizes: per level one sorted array of prefix keys, plus the SID table
    and the item order of the complete keys. There are no dense (prefix x code) tables and no Python dicts.

    Args:
        sids: (N, Lc) integer codes, row i = SID of item i (after the dedup token, so rows are unique).
        level_sizes: number of codes K_l of each of the Lc levels.

    Example:
        >>> trie = SidTrie(torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0]]), level_sizes=[3, 2, 2])
        >>> trie.valid_next(torch.tensor([0]), level=0)  # root: first codes 0 and 2 exist
        tensor([[ True, False,  True]])
        >>> trie.items(trie.encode(torch.tensor([[0, 1, 1], [1, 0, 0]])))
        tensor([ 1, -1])
    """

    def __init__(self, sids: Tensor, level_sizes: list[int]):
        sids = torch.as_tensor(sids)
        if sids.dim() != 2:
            raise ValueError(
                f"sids: expected a (num_items, num_levels) tensor, got shape {tuple(sids.shape)}"
            )
        if sids.dtype.is_floating_point or sids.dtype.is_complex or sids.dtype == torch.bool:
            raise ValueError(f"sids: expected integer codes, got dtype {sids.dtype}")
        num_items, depth = sids.shape
        if num_items == 0:
            raise ValueError("sids: the catalogue is empty")
        level_sizes = [int(k) for k in level_sizes]
        if len(level_sizes) != depth:
            raise ValueError(f"level_sizes: {len(level_sizes)} levels given but sids have {depth} columns")
        for level, k in enumerate(level_sizes):
            if k < 1:
                raise ValueError(f"level_sizes[{level}] = {k}: every level needs at least one code")
        if math.prod(level_sizes) > INT64_MAX:
            raise ValueError(
                f"level_sizes {level_sizes}: the product of the level sizes does not fit in int64, "
                "so SIDs cannot be encoded as mixed-radix keys"
            )
        sids = sids.long()
        for level, k in enumerate(level_sizes):
            bad = ((sids[:, level] < 0) | (sids[:, level] >= k)).nonzero()
            if len(bad) > 0:
                i = int(bad[0])
                raise ValueError(
                    f"sids[{i}, {level}] = {int(sids[i, level])}: code out of range for level {level} "
                    f"(size {k}, valid codes 0..{k - 1})"
                )

        self.level_sizes = level_sizes
        self.sids = sids  # (N, Lc)
        self.level_keys: list[Tensor] = []  # level l: sorted unique keys of the prefixes of length l + 1
        self.max_children: list[int] = []  # level l: most children any prefix of length l has
        keys = torch.zeros(num_items, dtype=torch.long, device=sids.device)  # (N,) key of the empty prefix
        for level, k in enumerate(level_sizes):
            keys = self.extend(keys, sids[:, level], level)
            unique = torch.unique(keys)  # sorted
            # Siblings are adjacent in the sorted keys, so children per parent = run lengths of unique // K_l.
            _, counts = torch.unique_consecutive(unique // k, return_counts=True)
            self.level_keys.append(unique)
            self.max_children.append(int(counts.max()))

        if len(self.level_keys[-1]) < num_items:
            order = torch.argsort(keys)
            dup = int((keys[order[1:]] == keys[order[:-1]]).nonzero()[0])
            i, j = sorted((int(order[dup]), int(order[dup + 1])))
            raise ValueError(
                f"sids: items {i} and {j} share the SID {tuple(sids[i].tolist())}; SIDs must be unique "
                "(add the dedup token before building the trie)"
            )
        # level_keys[-1] == keys[item_order]: the item index of each sorted complete key.
        self.item_order = torch.argsort(keys)  # (N,)

    @property
    def depth(self) -> int:
        """Number of code levels Lc."""
        return len(self.level_sizes)

    @property
    def num_items(self) -> int:
        return self.sids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.sids.device

    @property
    def nbytes(self) -> int:
        """Memory held by the trie's tensors, in bytes."""
        tensors = [self.sids, self.item_order, *self.level_keys]
        return sum(t.numel() * t.element_size() for t in tensors)

    def extend(self, prefix_keys: Tensor, codes: Tensor, level: int) -> Tensor:
        """Keys of the prefixes ``prefix_keys`` (length ``level``) extended by ``codes`` at ``level``; any shape."""
        return prefix_keys * self.level_sizes[level] + codes

    def encode(self, codes: Tensor) -> Tensor:
        """Keys of the prefixes ``codes`` (M, l), l <= Lc, each row starting at level 0 -> (M,)."""
        keys = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        for level in range(codes.shape[1]):
            keys = self.extend(keys, codes[:, level].long(), level)
        return keys

    def children(self, prefix_keys: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Candidate children of many prefixes at once.

        Args:
            prefix_keys: (M,) keys of prefixes of length ``level`` (key 0 = empty prefix at level 0).
            level: the level whose codes are looked up.

        Returns:
            codes (M, C_l) and valid (M, C_l), C_l = max children at this level: row m lists the codes that
            follow prefix m in the catalogue (ascending), padded with -1 where ``valid`` is False.
        """
        if not 0 <= level < self.depth:
            raise ValueError(f"level {level} out of range for a trie of depth {self.depth}")
        k = self.level_sizes[level]
        keys = self.level_keys[level]
        first_key = prefix_keys.contiguous() * k  # (M,) smallest possible child key
        start = torch.searchsorted(keys, first_key)  # (M,)
        end = torch.searchsorted(keys, first_key + k)  # (M,)
        slot = start[:, None] + torch.arange(self.max_children[level], device=keys.device)  # (M, C_l)
        valid = slot < end[:, None]
        codes = keys[slot.clamp(max=len(keys) - 1)] - first_key[:, None]
        return codes.masked_fill(~valid, -1), valid

    def valid_next(self, prefix_keys: Tensor, level: int) -> Tensor:
        """Mask of the codes allowed after each prefix: (M,) prefix keys of length ``level`` -> (M, K_level) bool."""
        k = self.level_sizes[level]
        codes, valid = self.children(prefix_keys, level)  # (M, C_l)
        # Padding slots write into an extra column that is dropped, so they never clear a real code.
        allowed = torch.zeros(len(codes), k + 1, dtype=torch.bool, device=codes.device)
        allowed.scatter_(1, codes.masked_fill(~valid, k), True)
        return allowed[:, :k]

    def items(self, full_keys: Tensor) -> Tensor:
        """Item index of each complete SID key (M,) -> (M,), -1 where the key is not a catalogue item."""
        keys = self.level_keys[-1]
        pos = torch.searchsorted(keys, full_keys.contiguous()).clamp(max=len(keys) - 1)
        found = keys[pos] == full_keys
        return torch.where(found, self.item_order[pos], torch.full_like(pos, -1))

    def to(self, device: torch.device | str) -> SidTrie:
        """A copy of the trie on ``device`` (the trie itself when it is already there)."""
        device = torch.device(device)
        if self.sids.device == device:
            return self
        moved = copy.copy(self)
        moved.sids = self.sids.to(device)
        moved.item_order = self.item_order.to(device)
        moved.level_keys = [keys.to(device) for keys in self.level_keys]
        return moved
