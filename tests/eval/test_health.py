"""Codebook health statistics (sidrec.eval.health) and their plots, on crafted inputs."""

import json
import sys

import pytest
import torch

from sidrec.eval.health import fit_trajectory, health_table, level_counts, read_fit_log
from sidrec.eval.locality import prefix_sharing


def clustered(num_clusters: int = 8, per: int = 25, dim: int = 16, seed: int = 0):
    """Tight clusters around random centres, and codes = (cluster, cluster sub-block, item in block)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, dim, generator=g)
    label = torch.arange(num_clusters).repeat_interleave(per)  # (N,)
    emb = centres[label] + 0.01 * torch.randn(len(label), dim, generator=g)
    codes = torch.stack([label, label % 3, torch.arange(len(label)) % per], dim=1)  # (N, 3)
    return emb, codes


def test_identical_embeddings_share_full_prefixes():
    base = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    emb = base.repeat_interleave(2, dim=0)  # items 2i and 2i+1 are identical
    codes = torch.stack([torch.arange(40) // 2 % 5, torch.arange(40) // 2], dim=1)  # twins share all codes
    out = prefix_sharing(codes, emb, num_samples=40)
    assert out["num_samples"] == 40 and out["neighbour"] == [1.0, 1.0]
    assert out["random"][1] < 0.2


def test_neighbours_share_more_than_random_pairs_on_clustered_data():
    emb, codes = clustered()
    out = prefix_sharing(codes, emb, num_samples=100, seed=1)
    assert out["neighbour"][:2] == [1.0, 1.0]  # the neighbour is in the same cluster, so shares codes 1 and 2
    assert out["random"][0] < 0.3 and out["random"][1] < 0.3  # 1 in 8 random partners share the cluster
    assert out["neighbour"][0] > out["random"][0] + 0.5
    assert out["neighbour"][2] == 0.0  # the last code is unique within a cluster
    # Prefix sharing can only fall with length, and the result is seeded.
    assert out["random"] == sorted(out["random"], reverse=True)
    assert prefix_sharing(codes, emb, num_samples=100, seed=1) == out
    assert prefix_sharing(codes, emb, num_samples=100, seed=1, chunk=7) == out  # chunking changes nothing


def test_codes_unrelated_to_embeddings_share_like_random_pairs():
    emb, _ = clustered()
    codes = torch.randint(0, 4, (len(emb), 1), generator=torch.Generator().manual_seed(3))
    out = prefix_sharing(codes, emb, num_samples=200)
    assert abs(out["neighbour"][0] - out["random"][0]) < 0.15


def test_prefix_sharing_rejects_bad_input():
    with pytest.raises(ValueError, match="same N"):
        prefix_sharing(torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="at least 2 items"):
        prefix_sharing(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="num_samples: must be >= 1"):
        prefix_sharing(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 5), num_samples=0)


def test_fit_trajectory_by_epoch_and_by_level(tmp_path):
    epochs = [{"epoch": e, "loss": 1.0 / e, "usage": [0.2 * e, 0.5], "perplexity": [2.0, 3.0],
               "collision_rate": 0.3 / e} for e in (1, 2, 3)]
    t = fit_trajectory(epochs)
    assert t["step"] == "epoch" and t["steps"] == [1, 2, 3]
    assert t["usage_level1_first"] == 0.2 and t["usage_level1_last"] == pytest.approx(0.6)
    assert t["collision_rate"] == [r["collision_rate"] for r in epochs]
    # RQ-KMeans logs once per fitted level, with the health of the codes so far.
    levels = [{"level": 1, "usage": [1.0], "collision_rate": 0.5}, {"level": 2, "usage": [1.0, 0.9]}]
    t = fit_trajectory(levels)
    assert t["step"] == "level" and t["steps"] == [1, 2] and t["collision_rate"] == [0.5, None]

    log = tmp_path / "fit_log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in epochs) + "\n\n")
    assert read_fit_log(log) == epochs
    log.write_text(json.dumps(epochs[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"fit_log.jsonl:2: invalid JSON"):
        read_fit_log(log)
    log.write_text('{"epoch": 1}\n')
    with pytest.raises(ValueError, match=r"fit_log.jsonl:1: expected an object with a 'usage' list"):
        read_fit_log(log)


def report():
    emb, codes = clustered()
    fit = fit_trajectory([{"epoch": e, "usage": [0.5, 0.25 * e], "collision_rate": 0.1} for e in (1, 2)])
    return {"run": "runs/x", "tokenizer": "rqvae", "num_items": len(codes), "level_sizes": [8, 3, 25],
            "codebook": {"usage": [1.0, 1.0, 1.0], "perplexity": [8.0, 2.9, 25.0], "dead_codes": [0, 0, 0],
                         "unique_tuples": 200, "max_group": 1, "collision_rate": 0.0},
            "prefix_sharing": prefix_sharing(codes, emb, 50), "fit": fit}, codes


def test_health_table_lists_levels_sharing_and_fit():
    rep, _ = report()
    table = health_table(rep)
    assert "tokenizer rqvae, 200 items, 3 levels" in table
    assert "collision rate 0.0000, largest group 1 items" in table
    assert "nearest neighbour" in table and "level-1 usage first 0.500 -> last 0.500" in table
    rep["prefix_sharing"] = rep["fit"] = None
    assert "nearest neighbour" not in health_table(rep) and "fit log" not in health_table(rep)


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from sidrec.eval.plots import save_health_plots

    rep, codes = report()
    counts = level_counts(codes, rep["level_sizes"])
    assert [c.sum() for c in counts] == [200, 200, 200] and len(counts[2]) == 25
    paths = save_health_plots(rep, counts, tmp_path / "inspect")
    assert sorted(p.name for p in paths) == ["fit_usage.png", "prefix_sharing.png", "usage_histogram.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib_say_which_extra(tmp_path, monkeypatch):
    from sidrec.eval.plots import save_health_plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    rep, codes = report()
    with pytest.raises(ImportError, match=r"pip install 'sidrec\[report\]'"):
        save_health_plots(rep, level_counts(codes, rep["level_sizes"]), tmp_path)
    assert not any(tmp_path.iterdir())
