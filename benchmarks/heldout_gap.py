"""Where a validation/test gap comes from: one trained run evaluated on shifted held-out examples.

Evaluates the run's model (trie-constrained beam 20, the same ``evaluate`` as ``sidrec evaluate``) on:

    valid                   i_1..i_{n-2} -> i_{n-1}
    test                    i_1..i_{n-1} -> i_n
    valid, last item cut    i_1..i_{n-3} -> i_{n-1}
    test, last item cut     i_1..i_{n-2} -> i_n       (the validation history, one step further)
    last training example   i_1..i_{n-3} -> i_{n-2}   (seen in training: memorisation shows here)

    PYTHONPATH=. python benchmarks/heldout_gap.py runs/ml-100k-demo
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sidrec.data.dataset import Dataset
from sidrec.data.splits import Examples, leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import evaluate
from sidrec.models.registry import load_recommender
from sidrec.pipeline import Run
from sidrec.tokenizers import load_sids


def cut_last(ex: Examples) -> Examples:
    """The same examples without their most recent history item (left-padded with -1)."""
    history = np.concatenate([np.full((len(ex), 1), -1), ex.history[:, :-1]], axis=1)
    return Examples(history, ex.target, ex.user)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    args = ap.parse_args()
    run = Run.open(args.run_dir, progress=False, log=lambda *_: None)
    ds = Dataset.load(run.dir / "data")
    sids, _ = load_sids(run.dir / "tokenizer")
    model = load_recommender(run.dir / "model", run.device)
    split = leave_one_out(ds, run.cfg.data.max_history)
    item_sids = torch.as_tensor(sids, device=run.device)
    trie = SidTrie(item_sids, model.cfg.level_sizes).to(run.device)
    last_train = Examples(cut_last(split.valid).history, np.array([s[-3] for s in ds.sequences]), split.valid.user)
    cases = {
        "valid: i_1..i_{n-2} -> i_{n-1}": split.valid,
        "test: i_1..i_{n-1} -> i_n": split.test,
        "valid, last item cut: i_1..i_{n-3} -> i_{n-1}": cut_last(split.valid),
        "test, last item cut: i_1..i_{n-2} -> i_n": cut_last(split.test),
        "last training example: i_1..i_{n-3} -> i_{n-2}": last_train,
    }
    print("| examples | R@10 | N@10 |\n| --- | --- | --- |")
    for name, ex in cases.items():
        m = evaluate(model, ex, item_sids, trie, beam_size=run.cfg.eval.beam_size, ks=[10],
                     batch_size=run.cfg.eval.batch_size, progress=False)
        print(f"| {name} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
