"""Shared fixtures: a tiny RecBole-format dataset and the CLI overrides that train on it in seconds."""

from pathlib import Path

import numpy as np
import pytest


def write_recbole(folder: Path, num_users: int = 60, num_items: int = 40, seed: int = 0) -> Path:
    """A small RecBole-format dataset whose users follow item chains (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(num_users):
        start = rng.integers(num_items)
        for t in range(int(rng.integers(5, 12))):
            lines.append(f"u{u}\ti{(start + t) % num_items}\t5\t{1000 + t}")
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\tclass:token_seq"]
    items += [f"i{i}\tMovie {i}\tgenre{i % 4} genre{i % 3}" for i in range(num_items)]
    (folder / "toy.item").write_text("\n".join(items) + "\n")
    return folder


def tiny_overrides(root: Path) -> tuple[Path, list[str]]:
    """(run directory, overrides of configs/ml-100k-demo.yaml) for a tiny run under ``root``."""
    data = write_recbole(root / "data")
    run = root / "run"
    return run, [
        f"data.path={data}", "data.format=recbole", "data.name=toy", "data.max_history=5",
        "embed.sources=[cooccurrence]", "embed.cooccurrence_dim=8",
        "tokenizer.name=rqvae",  # the demo preset uses rqkmeans; the tiny runs keep a small RQ-VAE
        "tokenizer.params={num_levels: 2, codebook_size: 8, epochs: 3, hidden_dims: [16], latent_dim: 8}",
        "model.params={d_model: 16, num_heads: 2, d_kv: 8, d_ff: 32, num_encoder_layers: 1, num_decoder_layers: 1, "
        "user_buckets: 0}", "train.epochs=2", "train.batch_size=32",
        "train.prefixes_per_user=24",  # pinned: the tiny runs (step counts, kill points) predate the demo's 36
        "train.warmup_steps=2", "train.patience=5", "train.device=cpu", "eval.beam_size=10", "eval.ks=[5, 10]",
        f"run_dir={run}", f"cache_dir={root / 'cache'}",
    ]


@pytest.fixture
def tiny_args(tmp_path):
    return tiny_overrides(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run directory, trained once per session; treat it as read-only."""
    from sidrec.cli import main

    run, args = tiny_overrides(tmp_path_factory.mktemp("tiny_run"))
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    return run
