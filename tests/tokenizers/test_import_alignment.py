"""Imported SIDs that do not belong to the items (shuffled keys) import with a warning quoting the numbers."""

import json

import numpy as np
import torch

from sidrec.cli import main
from sidrec.eval.locality import misalignment, prefix_sharing
from sidrec.tokenizers.index import write_index_json

DEMO = "configs/ml-100k-demo.yaml"


def clustered(num_clusters: int = 4, per: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``num_clusters`` tight, far-apart clusters and SIDs (cluster, rank in cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, 8)) * 10
    emb = np.concatenate([c + rng.standard_normal((per, 8)) * 0.1 for c in centres]).astype(np.float32)
    sids = np.array([[i // per, i % per] for i in range(num_clusters * per)])
    return emb, sids


def test_misalignment_tells_aligned_from_shuffled_codes():
    emb, sids = clustered(8, 50)
    emb, sids = torch.as_tensor(emb), torch.as_tensor(sids)
    assert misalignment(prefix_sharing(sids, emb, 400)) is None
    shuffled = sids[torch.randperm(len(sids), generator=torch.Generator().manual_seed(0))]
    problem = misalignment(prefix_sharing(shuffled, emb, 400))
    assert problem is not None and "random pairs" in problem and "400 sampled items" in problem
    # A level every item shares tells nothing apart: the next level is judged.
    one_code = torch.cat([torch.zeros(len(sids), 1, dtype=torch.long), sids], dim=1)
    assert misalignment(prefix_sharing(one_code, emb, 400)) is None
    assert "share code 2" in misalignment(prefix_sharing(torch.cat([one_code[:, :1], shuffled], 1), emb, 400))


def test_a_shuffled_index_file_imports_with_a_warning(tiny_args, tmp_path, capsys):
    run, args = tiny_args
    emb, sids = clustered()
    npy = tmp_path / "emb.npy"
    np.save(npy, emb)
    args = [a for a in args if not a.startswith("tokenizer.params")]
    args += ["embed.sources=[npy]", f"embed.npy_path={npy}", "tokenizer.name=imported"]
    aligned = write_index_json(tmp_path / "aligned.index.json", sids)
    assert main(["tokenize", DEMO, *args, f"tokenizer.params={{path: {aligned}}}", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
    meta = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    assert meta["prefix_sharing"]["neighbour"][0] == 1.0

    shuffled = write_index_json(tmp_path / "shuffled.index.json", sids[np.random.default_rng(0).permutation(40)])
    assert main(["tokenize", DEMO, *args, f"tokenizer.params={{path: {shuffled}}}", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "shuffled.index.json" in err and "tokenizer.params.keys" in err
    sharing = json.loads((run / "tokenizer" / "tokenizer.json").read_text())["prefix_sharing"]
    assert f"{sharing['neighbour'][0]:.1%} of the time, random pairs {sharing['random'][0]:.1%}" in err
