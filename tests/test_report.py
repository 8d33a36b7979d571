"""sidrec report: one self-contained HTML page whose data-derived strings are escaped.

The page is parsed with html.parser here; where Debian's headless Chromium is installed (``chromium-headless-shell``
or ``chromium``; ``.ci/run`` installs it) it is also rendered, and every figure must show in the screenshot.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from sidrec.cli import main
from sidrec.report import write_report
from sidrec.training.metrics_log import read_jsonl

HOSTILE = "<script>alert(1)</script>"
SASREC_TEST_RECALL10 = 0.4321  # a value no other cell of the tiny run shows
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "section", "h1", "h2", "h3", "p", "details",
                "summary", "pre", "code", "table", "thead", "tbody", "tr", "th", "td", "b", "img", "ul", "ol", "li",
                "span", "div"}


class Page(HTMLParser):
    """Start tags with their attributes, and the text (character references decoded)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def table_row(html: str, label: str) -> list[str]:
    """The value cells of the first table row headed ``label`` (the test table of the metrics section)."""
    row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", html)
    assert row is not None, f"no row {label!r}"
    return [re.sub(r"</?b>", "", cell) for cell in re.findall(r"<td>(.*?)</td>", row.group(1))]


def expected_row(metrics: dict, prefix: str) -> list[str]:
    """The test-table cells of ``prefix`` (``""`` for TIGER) for the tiny run's eval.ks = [5, 10]."""
    return [f"{metrics[f'{prefix}test.{m}@{k}']:.4f}" for k in (5, 10) for m in ("recall", "ndcg", "mrr")]


def hostile_copy(tiny_run, dest):
    """A copy of the tiny run whose titles, user keys and dataset name are HTML, plus a SASRec result."""
    run = dest / "run"
    shutil.copytree(tiny_run, run)
    items = json.loads((run / "data" / "items.json").read_text())
    items["item_text"]["title"] = [f'{HOSTILE} "Movie" & {i}' for i in range(len(items["item_keys"]))]
    (run / "data" / "items.json").write_text(json.dumps(items))
    meta = json.loads((run / "data" / "dataset.json").read_text())
    meta["name"] = HOSTILE
    meta["user_keys"] = [f"<img src=https://example.com/{i}.png>" for i in range(len(meta["user_keys"]))]
    (run / "data" / "dataset.json").write_text(json.dumps(meta))
    metrics = json.loads((run / "metrics.json").read_text())
    sasrec = {f"sasrec.{k}": 0.1 for k in metrics if k.startswith(("test.", "valid."))}
    sasrec["sasrec.test.recall@10"] = SASREC_TEST_RECALL10
    (run / "sasrec").mkdir()
    (run / "sasrec" / "metrics.json").write_text(json.dumps(sasrec))
    return run


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    run = hostile_copy(tiny_run, tmp_path_factory.mktemp("report"))
    notes: list[str] = []
    path = write_report(run, log=notes.append)
    return run, path, notes


def test_report_is_self_contained_and_escaped(report):
    run, path, notes = report
    assert path == run / "report.html" and notes == []
    html = path.read_text(encoding="utf-8")
    page = Page(html)
    text = "".join(page.text)

    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS  # no script, link, iframe, ... made it in
    imgs = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(imgs) == 3  # training curves, codebook curves, code-usage histogram
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    for _, attrs in page.tags:
        for value in attrs.values():
            assert not re.match(r"\s*(https?:)?//", value or ""), value
    assert "url(" not in html and "@import" not in html

    # The hostile strings are shown as text, never parsed as markup.
    assert HOSTILE in text and "<img src=https://example.com/" in text and '"Movie" & 3' in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test.recall@10", "test.ndcg@5", "valid.ndcg@10", "popularity.test.recall@10"):
        assert f"{metrics[key]:.4f}" in text
    for label, prefix in (("TIGER", ""), ("popularity", "popularity."), ("last-item transition", "transition.")):
        assert table_row(html, label) == expected_row(metrics, prefix)
    assert f"{SASREC_TEST_RECALL10:.4f}" in text
    assert text.count("Held-out next item") == 3


def test_report_without_a_model_says_what_is_missing(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "model")
    (run / "recommender" / "metrics.jsonl").unlink()
    notes: list[str] = []
    html = write_report(run, tmp_path / "out.html", log=notes.append).read_text()
    assert len(notes) == 2 and any("model.json" in n for n in notes) and any("metrics.jsonl" in n for n in notes)
    assert html.count('class="missing"') == 2 and "SASRec baseline" in html  # the note on the missing baseline
    assert "No SASRec training log" in html and "last-item transition" in html

    # Runs from before metrics.jsonl logged epochs (without "kind") to recommender/train_log.jsonl.
    epochs = [r for r in read_jsonl(tiny_run / "recommender" / "metrics.jsonl") if r.pop("kind") == "epoch"]
    (run / "recommender" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    # Runs evaluated before the transition baseline have no transition.* keys: no row for it.
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if "transition" not in k}))
    html = write_report(run, tmp_path / "out.html", log=notes.append).read_text()
    assert html.count('class="missing"') == 1 and 'alt="training curves"' in html
    assert "last-item transition" not in html and "popularity" in html
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_report_shows_the_sasrec_training_curves(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    sasrec = ["sasrec.params.d_model=16", "sasrec.train.epochs=2", "sasrec.train.batch_size=32", "sasrec.train.log_every=3"]
    assert main(["baseline", str(run / "config.yaml"), f"run_dir={run}", *sasrec, "--quiet"]) == 0
    records = read_jsonl(run / "sasrec" / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1] and records[0]["kind"] == "step"

    notes: list[str] = []
    html = write_report(run, log=notes.append).read_text()
    page = Page(html)
    imgs = {attrs["alt"]: attrs["src"] for tag, attrs in page.tags if tag == "img"}
    assert notes == [] and len(imgs) == 4
    png = imgs["SASRec training curves"]
    assert base64.b64decode(png.removeprefix("data:image/png;base64,")).startswith(b"\x89PNG\r\n\x1a\n")
    assert png != imgs["training curves"]
    assert "".join(page.text).count("Selected epoch") == 2  # TIGER's and SASRec's
    assert table_row(html, "SASRec") == expected_row(json.loads((run / "sasrec" / "metrics.json").read_text()),
                                                     "sasrec.")

    # Baselines from before sasrec/metrics.jsonl logged epochs (without "kind" or "lr") to train/train_log.jsonl.
    (run / "sasrec" / "metrics.jsonl").unlink()
    old = [{k: v for k, v in r.items() if k not in ("kind", "lr")} for r in records if r["kind"] == "epoch"]
    (run / "sasrec" / "train" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert 'alt="SASRec training curves"' in write_report(run, log=notes.append).read_text() and notes == []


def test_report_without_matplotlib_names_the_extra(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    assert main(["report", str(tiny_run), "-o", str(tmp_path / "r.html")]) == 2
    assert "sidrec[report]" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# Where Debian's packages put the browser: chromium-headless-shell (a /usr/bin wrapper of /usr/lib/chromium/...),
# or the full chromium; both take the same flags.
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
BROWSER_DIRS = ("/usr/lib/chromium", "/usr/bin")
REQUIRE_BROWSER = "SIDREC_REQUIRE_BROWSER"  # set (by .ci/run) where the browser test must run, not skip


def find_browser() -> str | None:
    """A headless Chromium on PATH or where apt installs it; None if there is none."""
    for name in BROWSERS:
        found = shutil.which(name) or next((str(Path(d) / name) for d in BROWSER_DIRS
                                            if os.access(Path(d) / name, os.X_OK)), None)
        if found:
            return found
    return None


def shown_at(shot: np.ndarray, figure: np.ndarray) -> tuple[int, int] | None:
    """(row, column) where ``figure`` (h, w, 3) appears pixel for pixel in ``shot`` (H, W, 3), or None.

    The page is rendered at scale 1 in a window wide enough that no figure is scaled, and Chromium draws an
    opaque PNG unchanged, so an exact match is the test: a row of the figure with the most distinct colours is
    searched in the screenshot's bytes, and each hit that is a whole pixel row is checked over the whole figure.
    """
    h, w = figure.shape[:2]
    row = max(range(h), key=lambda r: len(np.unique(figure[r], axis=0)))
    data, needle, width = shot.tobytes(), figure[row].tobytes(), shot.shape[1]
    at = data.find(needle)
    while at >= 0:
        y, x = divmod(at // 3, width)
        y -= row
        if at % 3 == 0 and x + w <= width and 0 <= y <= len(shot) - h and np.array_equal(shot[y:y + h, x:x + w],
                                                                                          figure):
            return y, x
        at = data.find(needle, at + 1)
    return None


def png_pixels(png: bytes) -> np.ndarray:
    """(h, w, 3) uint8 pixels of an opaque PNG."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "RGB" or im.getextrema()[3] == (255, 255), "the figure is not opaque"
        return np.asarray(im.convert("RGB"))


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = find_browser()
    if browser is None:
        if os.environ.get(REQUIRE_BROWSER):
            pytest.fail(f"{REQUIRE_BROWSER} is set but no headless Chromium was found ({', '.join(BROWSERS)})")
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")
    run, path, _ = report
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--hide-scrollbars", "--force-device-scale-factor=1"]
    res = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    dom = res.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{metrics['test.recall@10']:.4f}" in dom
    assert dom.count("<img") == 3 and "<script" not in dom and "&lt;script&gt;alert(1)" in dom

    # Every figure of the page, as Chromium draws it: a figure that is missing, broken or hidden fails here.
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1600,6000", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = png_pixels(shot.read_bytes())
    assert (pixels[-200:] == 255).all(), "the page is longer than the screenshot: make the window taller"
    figures = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', path.read_text())
    assert len(figures) == 3
    places = {alt: shown_at(pixels, png_pixels(base64.b64decode(src))) for src, alt in figures}
    assert None not in places.values(), f"figures not drawn: {[alt for alt, at in places.items() if at is None]}"
    assert len(set(places.values())) == 3  # three places, top to bottom in page order
    assert sorted(places.values()) == list(places.values())
