"""Decoding: a trie of valid semantic IDs and trie-constrained beam search."""

from sidrec.decoding.beam import BeamResult, constrained_beam_search, rank_all_items, score_all_items
from sidrec.decoding.trie import SidTrie

__all__ = ["BeamResult", "SidTrie", "constrained_beam_search", "rank_all_items", "score_all_items"]
