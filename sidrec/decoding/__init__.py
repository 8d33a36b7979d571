"""Decoding: a trie of valid semantic IDs, trie-constrained beam search and exact full-catalogue scoring."""

from sidrec.decoding.beam import (
    BeamResult,
    constrained_beam_search,
    rank_all_items,
    score_all_items,
    score_catalogue,
)
from sidrec.decoding.trie import SidTrie

__all__ = ["BeamResult", "SidTrie", "constrained_beam_search", "rank_all_items", "score_all_items",
           "score_catalogue"]
