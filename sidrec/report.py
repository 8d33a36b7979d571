"""``sidrec report``: one self-contained HTML page about a run directory; ``sidrec inspect``: the health report of
its semantic IDs (``inspect_run``).

The page has no external resources (no scripts, stylesheets or network images): figures are inline PNG
``data:`` URIs made with matplotlib (the optional extra ``report``), and every string that comes from the data
(titles, item and user keys, config values) is HTML-escaped. Sections, each drawn from files of the run:

    metrics          metrics.json (+ sasrec/metrics.json): TIGER beside the popularity, last-item transition
                     and SASRec baselines (and the exact full-catalogue ranking of eval.exact), test and valid
    training         recommender/metrics.jsonl: loss and learning rate per step, validation per epoch
    SASRec training  sasrec/metrics.jsonl: the same curves for the SASRec baseline (a note when not trained)
    codebook health  tokenizer/health.json, fit_log.jsonl (usage/perplexity over training), sids.npy (usage)
    SID tree         the most populated first-level codes, their sub-codes and the items under them
    recommendations  a few users' real histories, their held-out next item and the model's top-k

A section whose files are missing (a run still training, no baseline) says so instead of failing.

Example:
    >>> write_report("runs/ml-100k-demo")  # doctest: +SKIP
    PosixPath('runs/ml-100k-demo/report.html')
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.config import load_config, resolve_embed
from sidrec.data.dataset import Dataset
from sidrec.embeddings import embed_items
from sidrec.eval import plots
from sidrec.eval.health import fit_trajectory, learned_codes, read_fit_log
from sidrec.eval.locality import prefix_sharing
from sidrec.rundir import RunDir
from sidrec.tokenizers.base import CONFIG_FILE, codebook_health
from sidrec.training.metrics_log import read_jsonl
from sidrec.utils import atomic_write_text, read_json

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { border-bottom: 1px solid #999; }
tbody tr:nth-child(even) { background: #f4f4f4; } img { max-width: 100%; }
.missing { color: #a00; } .sid { font-family: monospace; color: #555; } .hit { background: #ffe58a; }
.muted { color: #666; } .user { display: inline-block; vertical-align: top; width: 400px; margin-right: 1.5em; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; }
"""


def inspect_run(run_dir: str | Path, num_samples: int = 1000,
                seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Health report of a run's semantic IDs; returns ``(report, learned codes (N, L))``.

    The embeddings for ``prefix_sharing`` are the run's own (``embed_items`` with the run's config: read from
    the embedding cache, recomputed when the cache is gone); ``num_samples=0`` skips them. Nothing in the run
    directory is written.

    Example:
        >>> report, codes = inspect_run("runs/ml-100k-demo")  # doctest: +SKIP
        >>> report["codebook"]["collision_rate"]  # doctest: +SKIP
        0.0101
    """
    run = RunDir(run_dir)
    if not run.sids_file(run.sids_dir).is_file():
        raise FileNotFoundError(f"{run.sids_file(run.sids_dir)}: missing; has the run been tokenized?")
    codes, sizes, name = learned_codes(run.sids_dir)  # the SIDs the model reads
    report: dict[str, Any] = {
        "run": str(run.root),
        "tokenizer": name,
        "num_items": int(codes.shape[0]),
        "level_sizes": sizes,
        "codebook": codebook_health(torch.as_tensor(codes), sizes),
        "prefix_sharing": None,
        "fit": None,
    }
    if num_samples > 0:
        cfg = load_config(run.config)
        ds = Dataset.load(run.data)
        emb = embed_items(ds, resolve_embed(cfg.embed, "embed"), Path(cfg.cache_dir) / "embeddings", device="cpu",
                          progress=False)
        report["prefix_sharing"] = prefix_sharing(torch.as_tensor(codes), torch.as_tensor(emb), num_samples,
                                                  seed)
    if run.fit_log.is_file():  # the tokenize stage's fit
        records = read_fit_log(run.fit_log)
        report["fit"] = fit_trajectory(records) if records else None
    return report, codes


def write_report(run_dir: str | Path, output: str | Path | None = None, num_users: int = 3, num_codes: int = 3,
                 k: int = 10, log: Callable[[str], None] = print) -> Path:
    """Render the report of ``run_dir`` and write it atomically (default ``run_dir/report.html``).

    Args:
        run_dir: a run directory (finished or not: missing parts are reported on the page and to ``log``).
        output: the HTML file to write.
        num_users: users shown with example recommendations.
        num_codes: first-level codes (and sub-codes under each) shown in the SID tree.
        k: recommendations per example user.
        log: receives one line per section that could not be drawn.

    Returns:
        The path written.
    """
    if num_users < 0 or num_codes < 1 or k < 1:
        raise ValueError(f"report: need num_users >= 0, num_codes >= 1, k >= 1 (got {num_users}, {num_codes}, {k})")
    run = RunDir(run_dir)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.config}: missing; is {run.root} a run directory?")
    out = Path(output) if output is not None else run.report
    atomic_write_text(out, render_report(run.root, num_users=num_users, num_codes=num_codes, k=k, log=log))
    return out


def render_report(run_dir: str | Path, num_users: int = 3, num_codes: int = 3, k: int = 10,
                  log: Callable[[str], None] = print) -> str:
    """The report page of ``run_dir`` as an HTML string (see ``write_report``)."""
    run = RunDir(run_dir)
    ds = Dataset.load(run.data) if (run.data / "dataset.json").exists() else None
    sections = [
        ("Metrics", lambda: _metrics_section(run)),
        ("Training", lambda: _training_section(run)),
        ("SASRec baseline training", lambda: _sasrec_training_section(run)),
        ("Codebook health", lambda: _codebook_section(run)),
        ("Semantic-ID tree (sample)", lambda: _tree_section(run, ds, num_codes)),
        ("Example recommendations", lambda: _recommendations_section(run, ds, num_users, k)),
    ]
    body = [_header(run, ds)]
    for title, make in sections:
        try:
            html = make()
        except _Missing as e:
            log(f"report: {title.lower()}: {e}")
            html = f'<p class="missing">Not available: {escape(str(e))}</p>'
        body.append(f"<section>\n<h2>{escape(title)}</h2>\n{html}\n</section>")
    name = escape(ds.name if ds is not None else run.root.name)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>sidrec report: {name}</title>'
            f"\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


class _Missing(Exception):
    """A section's input is not in the run directory (yet)."""


def _need(path: Path) -> Path:
    if not path.exists():
        raise _Missing(f"{path} does not exist")
    return path


def _img(fig, alt: str) -> str:
    return f'<img src="{plots.data_uri(fig)}" alt="{escape(alt)}">'


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table from already-escaped cell strings."""
    thead = "".join(f"<th>{h}</th>" for h in head)
    tbody = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{thead}</tr></thead>\n<tbody>\n{tbody}\n</tbody>\n</table>"


# -- sections ---------------------------------------------------------------------------------------------------
def _header(run: RunDir, ds: Dataset | None) -> str:
    parts = [f"<h1>sidrec report: {escape(ds.name if ds is not None else run.root.name)}</h1>",
             f'<p class="muted">run directory {escape(str(run.root.resolve()))}</p>']
    if ds is not None:
        stats = ds.stats()
        parts.append(f"<p>{stats['users']} users, {stats['items']} items, {stats['interactions']} interactions "
                     f"(average history {stats['avg_len']:.1f}).</p>")
    if run.run_json.exists():
        meta = read_json(run.run_json)
        parts.append(f'<p class="muted">{escape(", ".join(f"{k}: {v}" for k, v in meta.items()))}</p>')
    config = run.config.read_text(encoding="utf-8")
    parts.append(f"<details><summary>config.yaml</summary><pre>{escape(config)}</pre></details>")
    return "\n".join(parts)


def _metrics_section(run: RunDir) -> str:
    metrics = read_json(_need(run.metrics))
    models = [("TIGER", "", metrics), ("popularity", "popularity.", metrics)]
    if any(k.startswith("transition.") for k in metrics):  # absent in runs evaluated before it existed
        models.append(("last-item transition", "transition.", metrics))
    has_sasrec = run.sasrec.metrics.exists()
    if has_sasrec:
        models.append(("SASRec", "sasrec.", read_json(run.sasrec.metrics)))
    ks = sorted({int(m.group(1)) for key in metrics if (m := re.fullmatch(r"test\.recall@(\d+)", key))})
    names = ("recall", "ndcg", "mrr") if f"test.mrr@{ks[0]}" in metrics else ("recall", "ndcg")  # MRR: newer runs
    exact = [("TIGER, exact ranking", "exact.", metrics)] if "exact.test.users" in metrics else []  # eval.exact
    html = []
    for part in ("test", "valid"):
        cols = [f"{name}@{k}" for k in ks for name in names]
        shown = models + (exact if part == "test" else [])
        values = [[source.get(f"{prefix}{part}.{c}") for c in cols] for _, prefix, source in shown]
        best = [max((v for v in col if v is not None), default=None) for col in zip(*values)]
        rows = []
        for (label, _, _), row in zip(shown, values):
            cells = ["&ndash;" if v is None else f"<b>{v:.4f}</b>" if v == b else f"{v:.4f}"
                     for v, b in zip(row, best)]
            rows.append([label, *cells])
        html += [f"<h3>{part}</h3>", _table(["model", *cols], rows)]
        if part == "test" and exact:
            k = 10 if 10 in ks else ks[-1]
            html.append(f"<p>The exact ranking scores every item's SID by teacher forcing for "
                        f"{metrics['exact.test.users']} test users: beam search missed "
                        f"{metrics[f'exact.test.beam_miss@{k}']:.2%} of its top-{k} items and "
                        f"{metrics[f'exact.test.target_beam_miss@{k}']:.2%} of the targets in its top {k}.</p>")
    if not has_sasrec:
        html.append('<p class="muted">No SASRec baseline: run <code>sidrec baseline CONFIG</code> to add it.</p>')
    protocol = metrics.get("protocol", {})
    if protocol:
        html.append(f'<p class="muted">{escape(", ".join(f"{k}: {v}" for k, v in protocol.items()))}</p>')
    return "\n".join(html)


def _training_section(run: RunDir) -> str:
    rdir = run.recommender
    path = rdir.log
    if not path.exists() and (rdir.root / "train_log.jsonl").exists():
        path = rdir.root / "train_log.jsonl"  # runs from before metrics.jsonl: epoch records only, without "kind"
    records = read_jsonl(_need(path))
    epochs = [r for r in records if r.get("kind", "epoch") == "epoch"]
    if not epochs:
        raise _Missing(f"{path} has no finished epoch yet")
    html = [_img(plots.training_curves(records), "training curves")]
    if rdir.best_json.exists():
        best = read_json(rdir.best_json)
        html.append(_training_summary(epochs, best["epoch"], best["valid"]))
    return "\n".join(html)


def _sasrec_training_section(run: RunDir) -> str:
    """The SASRec baseline's curves (``sasrec/metrics.jsonl``); a muted note, not an error, without a baseline."""
    sdir = run.sasrec
    path = sdir.training.log
    if not path.exists() and (sdir.training.root / "train_log.jsonl").exists():
        path = sdir.training.root / "train_log.jsonl"  # baselines from before metrics.jsonl: epoch records only
    if not path.exists():
        return ('<p class="muted">No SASRec training log: run <code>sidrec baseline CONFIG</code> to train the '
                "baseline.</p>")
    records = read_jsonl(path)
    epochs = [r for r in records if r.get("kind", "epoch") == "epoch"]
    if not epochs:
        return f'<p class="muted">{escape(str(path))} has no finished epoch yet.</p>'
    html = [_img(plots.training_curves(records), "SASRec training curves")]
    best = read_json(sdir.metrics)["best_epoch"] if sdir.metrics.exists() else None
    selected = next((r for r in epochs if r["epoch"] == best), None)  # None while the baseline still trains
    if selected is not None:
        valid = {k.removeprefix("valid."): v for k, v in selected.items() if k.startswith("valid.")}
        html.append(_training_summary(epochs, best, valid))
    return "\n".join(html)


def _training_summary(epochs: list[dict], best_epoch: int, valid: dict[str, float]) -> str:
    """One sentence: the selected epoch and its validation metrics, training time and throughput."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in valid.items())
    return (f"<p>Selected epoch {best_epoch} of {len(epochs)} (validation {escape(metrics)}); "
            f"{sum(r['train_seconds'] for r in epochs):.1f} s of training, "
            f"{epochs[-1]['samples_per_second']:.0f} samples/s in the last epoch.</p>")


def _codebook_section(run: RunDir) -> str:
    tdir = run.sids_dir  # the SIDs the model reads
    health = read_json(_need(run.health_file(tdir)))
    sids = np.load(_need(run.sids_file(tdir)), allow_pickle=False)  # (N, L + 1), last column the dedup token
    codebook_size = int(read_json(_need(tdir / CONFIG_FILE))["config"]["codebook_size"])
    rows = [[f"level {lv + 1}", f"{u:.3f}", f"{p:.1f} / {codebook_size}", str(d)]
            for lv, (u, p, d) in enumerate(zip(health["usage"], health["perplexity"], health["dead_codes"]))]
    html = [_table(["level", "codes used", "perplexity", "dead codes"], rows),
            f"<p>{sids.shape[0]} items, {health['unique_tuples']} distinct code tuples; collision rate "
            f"{health['collision_rate']:.4f} (items that need a non-zero dedup token), largest group "
            f"{health['max_group']}.</p>"]
    if run.fit_log.exists() and (fit_log := read_jsonl(run.fit_log)):  # the tokenize stage's fit
        html.append(_img(plots.codebook_curves(fit_log), "codebook usage and perplexity during tokenizer training"))
    html.append(_img(plots.code_usage_histogram(sids[:, :-1], codebook_size), "items per code at each level"))
    return "\n".join(html)


def _tree_section(run: RunDir, ds: Dataset | None, num_codes: int, items_shown: int = 5) -> str:
    """The ``num_codes`` most populated first-level codes, as many sub-codes under each, their items."""
    if ds is None:
        raise _Missing(f"{run.data / 'dataset.json'} does not exist")
    sids = np.load(_need(run.sids_file(run.sids_dir)), allow_pickle=False)  # (N, Lc)

    def top_codes(items: np.ndarray, level: int) -> list[tuple[int, np.ndarray]]:
        codes, counts = np.unique(sids[items, level], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:num_codes]
        return [(int(codes[i]), items[sids[items, level] == codes[i]]) for i in order]

    def item_line(i: int) -> str:
        sid = ", ".join(map(str, sids[i]))
        return f'<li><span class="sid">({sid})</span> {escape(ds.title(i))} <span class="muted">' \
               f"[{escape(ds.item_keys[i])}]</span></li>"

    html = ["<ul>"]
    for code, members in top_codes(np.arange(len(sids)), 0):
        html.append(f"<li><b>level-1 code {code}</b> ({_items(len(members))})<ul>")
        for sub, sub_members in top_codes(members, 1):
            html.append(f"<li>code ({code}, {sub}) ({_items(len(sub_members))})<ul>")
            html += [item_line(int(i)) for i in sub_members[:items_shown]]
            if len(sub_members) > items_shown:
                html.append(f'<li class="muted">&hellip; and {len(sub_members) - items_shown} more</li>')
            html.append("</ul></li>")
        html.append("</ul></li>")
    html.append("</ul>")
    return "\n".join(html)


def _recommendations_section(run: RunDir, ds: Dataset | None, num_users: int, k: int,
                             history_shown: int = 5) -> str:
    """Seeded example users: the last items of their real history, the held-out next item, the model's top-k."""
    from sidrec.serve.service import Recommender

    _need(run.model_json)
    if ds is None:
        raise _Missing(f"{run.data / 'dataset.json'} does not exist")
    rec = Recommender.from_run(run.root, allow_stale=True)  # a stale model is shown, with a warning
    candidates = [u for u, seq in enumerate(ds.sequences) if len(seq) >= 2]
    users = np.sort(np.random.default_rng(0).choice(candidates, min(num_users, len(candidates)), replace=False))
    histories = [[ds.item_keys[i] for i in ds.sequences[u][:-1]] for u in users]
    results = rec.recommend_batch(histories, k=max(1, min(k, ds.num_items - 1)))
    blocks = []
    for u, history, recs in zip(users, histories, results):
        target = ds.item_keys[int(ds.sequences[u][-1])]
        shown = ds.sequences[u][:-1][-history_shown:]
        earlier = len(history) - len(shown)
        hist_html = "".join(f"<li>{escape(ds.title(int(i)))}</li>" for i in shown)
        recs_html = "".join(
            f'<li class="{"hit" if r.item == target else "rec"}">{escape(r.title)} '
            f'<span class="sid">({", ".join(map(str, r.sid))})</span></li>' for r in recs
        )
        hit = any(r.item == target for r in recs)
        blocks.append(
            f'<div class="user"><h3>user {escape(ds.user_keys[u])}</h3>'
            f"<p>History ({len(history)} items{f', {earlier} earlier not shown' if earlier else ''}):</p>"
            f"<ol>{hist_html}</ol><p>Held-out next item: <b>{escape(ds.title(int(ds.sequences[u][-1])))}</b> "
            f"({'in' if hit else 'not in'} the top {len(recs)})</p><p>Recommended:</p><ol>{recs_html}</ol></div>"
        )
    note = ('<p class="muted">Users drawn with a fixed seed; each history is all but the user\'s last item '
            "(the test item, highlighted when recommended); items already in the history are not recommended.</p>")
    return note + "\n" + "\n".join(blocks)
