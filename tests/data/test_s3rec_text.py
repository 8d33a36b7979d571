"""The s3rec loader's item text: any field of a configurable file, titles end to end, nothing dropped silently."""

import json
from pathlib import Path

import numpy as np
import pytest

from sidrec.cli import main
from sidrec.data.loaders import load_dataset


def write_s3rec(d: Path, num_users: int = 60, num_items: int = 40, text: bool = True) -> Path:
    """A small S3Rec-format dataset (users follow item chains) with titled items in the default text file."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, num_users + 1):
        start = int(rng.integers(num_items))
        lines.append(" ".join(map(str, [u, *((start + t) % num_items + 1 for t in range(int(rng.integers(5, 12))))])))
    (d / "Shop.txt").write_text("\n".join(lines) + "\n")
    if text:
        records = [{"item_id": i, "title": f"Widget {i}", "brand": f"Brand{i % 3}", "categories": ["Tools", "Hand"],
                    "price": i * 1.5} for i in range(1, num_items + 1)]
        (d / "Shop_item_attributes_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_every_field_is_kept_title_included(tmp_path):
    ds = load_dataset("s3rec", write_s3rec(tmp_path))
    assert list(ds.item_text) == ["title", "brand", "categories", "price"]
    assert ds.title(0) == "Widget 1" and ds.item_text["categories"][0] == "Tools, Hand"
    assert ds.item_text["price"][1] == "3.0" and ds.source["warnings"] == []


def test_text_fields_choose_and_report_the_rest(tmp_path):
    write_s3rec(tmp_path)
    ds = load_dataset("s3rec", tmp_path, text_fields=["brand"])
    assert list(ds.item_text) == ["brand"]
    (warning,) = ds.source["warnings"]
    assert "title, categories, price present but not kept" in warning and "Shop_item_attributes_text.jsonl" in warning
    with pytest.raises(ValueError, match=r"Shop_item_attributes_text.jsonl: no item has the text field 'titel' "
                                         r"\(fields: title, brand, categories, price\)"):
        load_dataset("s3rec", tmp_path, text_fields=["titel"])


def test_an_lcrec_item_json_beside_the_txt(tmp_path):
    write_s3rec(tmp_path, text=False)
    items = {str(i): {"title": f"Thing {i + 1}", "description": ""} for i in range(40)}  # 0-based keys
    (tmp_path / "Shop.item.json").write_text(json.dumps(items))
    ds = load_dataset("s3rec", tmp_path)  # the default when there is no .jsonl
    assert ds.title(0) == "Thing 1" and ds.item_text["description"][0] is None
    assert ds.source["files"].keys() == {"Shop.txt", "Shop.item.json"}
    write_s3rec(tmp_path)  # both defaults present: the .jsonl is read, the other named in a warning
    ds = load_dataset("s3rec", tmp_path)
    assert ds.title(0) == "Widget 1" and "Shop.item.json is not read" in ds.source["warnings"][0]
    assert "data.options.text_file: Shop.item.json" in ds.source["warnings"][0]
    assert load_dataset("s3rec", tmp_path, text_file="Shop.item.json").title(0) == "Thing 1"


def test_title_field_and_bad_text_options(tmp_path):
    write_s3rec(tmp_path, text=False)
    (tmp_path / "names.jsonl").write_text('{"item_id": 1, "name": "Cafe Blue", "categories": "Food"}\n')
    ds = load_dataset("s3rec", tmp_path, text_file="names.jsonl", title_field="name")
    assert ds.title(0) == "Cafe Blue" and ds.item_text["name"][0] == "Cafe Blue" and ds.title(1) == "2"
    with pytest.raises(FileNotFoundError, match=r"other.jsonl: file not found \(text_file\)"):
        load_dataset("s3rec", tmp_path, text_file="other.jsonl")
    with pytest.raises(ValueError, match="must be the name of a .jsonl or .json file"):
        load_dataset("s3rec", tmp_path, text_file="../names.jsonl")
    with pytest.raises(ValueError, match="no item has the text field 'title'"):
        load_dataset("s3rec", tmp_path, text_file="names.jsonl", title_field="title")
    (tmp_path / "names.jsonl").write_text('{"item_id": 1, "name": "A"}\n{"item_id": 2, "name": {"x": 1}}\n')
    with pytest.raises(ValueError, match="names.jsonl:2: name: expected text, got dict"):
        load_dataset("s3rec", tmp_path, text_file="names.jsonl")


def test_titles_reach_recommend_and_the_report(tiny_args, tmp_path, capsys):
    from sidrec.report import render_report
    from sidrec.serve.service import Recommender

    run, args = tiny_args
    data = write_s3rec(tmp_path / "shop")
    args = [a for a in args if not a.startswith(("data.", "embed.text"))]
    args += [f"data.path={data}", "data.format=s3rec", "data.name=shop", "data.max_history=5",
             "data.options={text_fields: [title, brand]}", "embed.sources=[cooccurrence]"]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    assert "categories, price present but not kept" in capsys.readouterr().err  # a warning even with --quiet
    assert main(["recommend", str(run), "--history", "3", "4", "-k", "3", "--json"]) == 0
    assert all(r["title"].startswith("Widget ") for r in json.loads(capsys.readouterr().out))
    assert Recommender.from_run(run, "cpu").dataset.title(4) == "Widget 5"  # /items/{key} and /recommend
    assert "Widget " in render_report(run, log=lambda *_: None)


def test_a_text_file_cut_short_is_counted(tmp_path):
    write_s3rec(tmp_path)
    text = tmp_path / "Shop_item_attributes_text.jsonl"
    text.write_text("".join(text.read_text().splitlines(keepends=True)[:30]))  # cut at a line boundary
    ds = load_dataset("s3rec", tmp_path)
    assert ds.title(29) == "Widget 30" and ds.title(30) == "31"
    assert ds.source["warnings"] == [f"{text}: no record for 10 of the 40 items (their text is empty)"]
