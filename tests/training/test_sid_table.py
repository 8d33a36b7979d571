"""One SID table from training to test (issue 14): a LETTER tokenizer trained in an alternating schedule, with
collisions repaired, trains, validates, saves and tests the recommender on exactly the same SIDs."""

import json

import numpy as np
import torch

from sidrec.cli import main
from sidrec.data.dataset import Dataset
from sidrec.pipeline import Run
from sidrec.tokenizers import load_tokenizer
from sidrec.training.metrics_log import read_jsonl


def test_letter_alternating_trains_validates_saves_and_tests_one_sid_table(tiny_args):
    run, args = tiny_args
    args = [a for a in args if not a.startswith(("tokenizer.", "train.epochs"))] + [
        "tokenizer.name=letter",
        # 2 levels x 4 codes for ~60 items: collisions that LETTER's repair must re-assign
        "tokenizer.params={num_levels: 2, codebook_size: 4, div_clusters: 2, epochs: 3, hidden_dims: [16], "
        "latent_dim: 8, alpha: 0.02}",
        "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 8}",
        "schedule.name=alternating", "schedule.tokenizer_lr=0.01", "schedule.finetune_epochs=1",
        "train.epochs=3", "train.eval_beam_size=10",
    ]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    log = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["phase"] for r in log] == ["tokenizer", "recommender", "recommender"]
    assert "loss.tok.cf" in log[0] and "loss.tok.div" in log[0]  # the tokenizer phase trained LETTER's own loss

    saved = np.load(run / "model" / "tokenizer" / "sids.npy")  # the joint run's SIDs, beside its model
    best = np.load(run / "recommender" / "best" / "tokenizer" / "sids.npy")  # what the best epoch trained on
    assert np.array_equal(saved, best)
    tok = load_tokenizer(run / "model" / "tokenizer")
    emb = torch.as_tensor(Run.open(run, progress=False, log=lambda *_: None).stage_embed(
        Dataset.load(run / "data")), dtype=torch.float32)
    assert np.array_equal(saved, tok.semantic_ids(emb).numpy())  # LETTER's repaired SIDs, the one function
    assert (saved[:, :-1] != tok.encode(emb).numpy()).any()  # the repair moved some items: the check has teeth
    # Validated on the same table and model the test stage evaluates with: the same validation metrics.
    metrics = json.loads((run / "metrics.json").read_text())
    selected = max(log, key=lambda r: r.get("valid.ndcg@10", -1.0))
    assert selected["valid.ndcg@10"] == metrics["valid.ndcg@10"]
    assert selected["valid.recall@10"] == metrics["valid.recall@10"]
