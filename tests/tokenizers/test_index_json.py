"""LC-Rec/LETTER *.index.json import/export and the JSON/parquet SID exports."""

import json
import sys

import numpy as np
import pytest
import torch

from sidrec.data.dataset import Dataset
from sidrec.tokenizers.base import codebook_health
from sidrec.tokenizers.index import (
    export_sids,
    import_sids,
    parse_token,
    read_index_json,
    sid_records,
    sid_tokens,
    write_index_json,
)


def toy_dataset(n: int = 4, titles: bool = True) -> Dataset:
    text = {"title": [f"Item {i}" if i != 1 else None for i in range(n)]} if titles else {}
    return Dataset("toy", [f"B{i:03d}" for i in range(n)], ["u0"], [np.arange(n)], item_text=text)


def write(tmp_path, obj, name="Toy.index.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


# The first four entries of LETTER's data/Instruments/Instruments.index.json (github HonghuiBao2000/LETTER).
LCREC = {"0": ["<a_128>", "<b_241>", "<c_146>", "<d_235>"], "1": ["<a_171>", "<b_57>", "<c_141>", "<d_231>"],
         "2": ["<a_56>", "<b_57>", "<c_51>", "<d_109>"], "3": ["<a_11>", "<b_198>", "<c_51>", "<d_249>"]}


def test_reads_an_lcrec_index_file(tmp_path):
    codes = read_index_json(write(tmp_path, LCREC), toy_dataset())
    assert codes.dtype == np.int64
    assert codes.tolist() == [[128, 241, 146, 235], [171, 57, 141, 231], [56, 57, 51, 109],
                              [11, 198, 51, 249]]


def test_write_then_read_round_trips(tmp_path):
    sids = np.random.default_rng(0).integers(0, 300, size=(30, 5))
    path = write_index_json(tmp_path / "out.index.json", sids)
    assert np.array_equal(read_index_json(path, toy_dataset(30)), sids)
    # Keys by item key (ASIN-like) instead of index, written in another order.
    ds = toy_dataset(30)
    order = np.random.default_rng(1).permutation(30)
    path = write_index_json(tmp_path / "keys.index.json", sids[order], [ds.item_keys[i] for i in order])
    assert np.array_equal(read_index_json(path, ds, keys="item"), sids)


def test_written_file_has_the_lcrec_layout(tmp_path):
    path = write_index_json(tmp_path / "x.index.json", np.array([[12, 7, 3, 0]]))
    assert path.read_text() == '{"0": ["<a_12>", "<b_7>", "<c_3>", "<d_0>"]}\n'
    assert sid_tokens([1, 2]) == ["<a_1>", "<b_2>"]
    assert parse_token("<c_30>", 2, "here") == 30


@pytest.mark.parametrize("change, message", [
    ({"4": ["<a_1>", "<b_1>", "<c_1>", "<d_1>"]},
     r"item '4': not an item index of dataset 'toy' \(items are 0\.\.3\)"),
    ({"x": ["<a_1>", "<b_1>", "<c_1>", "<d_1>"]}, r"item 'x': not an item index"),
    ({"01": ["<a_1>", "<b_1>", "<c_1>", "<d_1>"]}, r"item '01': not an item index"),
    ({"2": ["<a_x>", "<b_1>", "<c_1>", "<d_1>"]}, r"item '2', token 1: malformed token '<a_x>'"),
    ({"2": ["<a_1>", "<c_1>", "<b_1>", "<d_1>"]},
     r"item '2', token 2: token '<c_1>' has level letter 'c', expected 'b'"),
    ({"2": ["<a_1>", "<b_-3>", "<c_1>", "<d_1>"]}, r"item '2', token 2: token '<b_-3>' has a negative code"),
    ({"2": ["<a_1>", "<b_1>", "<c_1>"]}, r"item '2': 3 tokens, expected 4 as item '0'"),
    ({"2": []}, r"item '2': expected a non-empty list of tokens"),
    ({"2": "<a_1><b_1><c_1><d_1>"}, r"item '2': expected a non-empty list of tokens"),
    ({"2": ["<a_1>", "<b_1>", "<c_1>", 7]}, r"item '2', token 4: malformed token 7"),
])
def test_bad_entries_name_the_file_and_item(tmp_path, change, message):
    path = write(tmp_path, {**LCREC, **change})
    with pytest.raises(ValueError, match=message) as e:
        read_index_json(path, toy_dataset())
    assert str(path) in str(e.value)


def test_missing_items_unknown_keys_and_codebook_size(tmp_path):
    ds = toy_dataset()
    path = write(tmp_path, {k: v for k, v in LCREC.items() if k != "2"})
    with pytest.raises(ValueError, match=r"no SID for 1 of the 4 items of dataset 'toy', e\.g\. item 2 "
                                         r"\(key 'B002'\)"):
        read_index_json(path, ds)
    with pytest.raises(ValueError, match=r"item '0': not an item key of dataset 'toy'"):
        read_index_json(write(tmp_path, LCREC), ds, keys="item")
    with pytest.raises(ValueError, match=r"item '0', token 2: token '<b_241>': code 241 >= codebook_size"):
        read_index_json(write(tmp_path, LCREC), ds, codebook_size=200)
    assert read_index_json(write(tmp_path, LCREC), ds, codebook_size=256).max() == 249


def test_malformed_files(tmp_path):
    ds = toy_dataset()
    with pytest.raises(FileNotFoundError, match="nope.json: file not found"):
        read_index_json(tmp_path / "nope.json", ds)
    with pytest.raises(ValueError, match=r"bad.json:1:\d+: invalid JSON"):
        read_index_json(write(tmp_path, '{"0": [', "bad.json"), ds)
    with pytest.raises(ValueError, match="expected a non-empty JSON object"):
        read_index_json(write(tmp_path, [["<a_1>"]]), ds)
    with pytest.raises(ValueError, match="duplicate key '0'"):
        read_index_json(write(tmp_path, '{"0": ["<a_1>"], "0": ["<a_2>"]}'), ds)


def test_import_dedups_only_collisions_and_derives_level_sizes(tmp_path):
    ds = toy_dataset()
    unique = import_sids({"path": str(write(tmp_path, LCREC))}, ds)
    assert not unique.meta["dedup"] and unique.sids.shape == (4, 4)
    # Sizes from the data: largest code + 1 per level.
    assert unique.level_sizes == [172, 242, 147, 250] and unique.meta["level_sizes"] == unique.level_sizes
    declared = import_sids({"path": str(write(tmp_path, LCREC)), "codebook_size": 256}, ds)
    assert declared.level_sizes == [256] * 4 and declared.health["usage"][0] == 4 / 256

    # Real LC-Rec/LETTER files can hold full collisions (LETTER's Instruments items 112 and 175 share all 4 codes).
    clash = {**LCREC, "3": LCREC["1"], "2": LCREC["1"]}  # items 1, 2, 3 share all four codes
    imp = import_sids({"path": str(write(tmp_path, clash, "clash.json"))}, ds)
    assert imp.meta["dedup"] and imp.meta["num_levels"] == 4
    assert imp.sids[:, -1].tolist() == [0, 0, 1, 2] and len({tuple(r) for r in imp.sids.tolist()}) == 4
    assert imp.level_sizes == [172, 242, 147, 236, 3]
    assert imp.health["max_group"] == 3 and imp.health["collision_rate"] == 0.5


def test_import_params_are_checked(tmp_path):
    ds = toy_dataset()
    with pytest.raises(ValueError, match=r"tokenizer\.params\.path: required"):
        import_sids({}, ds)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.epochs: unknown parameter"):
        import_sids({"path": "x", "epochs": 3}, ds)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.keys: expected one of 'index', 'item'"):
        import_sids({"path": "x", "keys": "asin"}, ds)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.params\.path: .*missing\.json: file not found"):
        import_sids({"path": str(tmp_path / "missing.json")}, ds)


def test_codebook_health_takes_one_size_per_level():
    h = codebook_health(torch.tensor([[0, 0], [1, 2], [1, 2]]), [2, 4])
    assert h["usage"] == [1.0, 0.5] and h["dead_codes"] == [0, 2] and h["max_group"] == 2
    with pytest.raises(ValueError, match=r"values must lie in 0\.\.1, got 2\.\.2 at level 2"):
        codebook_health(torch.tensor([[0, 2]]), [4, 2])
    with pytest.raises(ValueError, match="2 level sizes for 3 levels"):
        codebook_health(torch.zeros(1, 3, dtype=torch.long), [4, 4])


def test_export_json_and_index_json(tmp_path):
    ds = toy_dataset()
    sids = np.array([[1, 2, 0], [1, 2, 1], [0, 3, 0], [2, 2, 0]])
    records = sid_records(ds, sids)
    assert records[0] == {"index": 0, "item": "B000", "title": "Item 0", "sid": [1, 2, 0],
                          "tokens": ["<a_1>", "<b_2>", "<c_0>"], "sid_string": "<a_1><b_2><c_0>"}
    assert records[1]["title"] is None and sid_records(toy_dataset(titles=False), sids)[0]["title"] is None
    out = json.loads(export_sids(ds, sids, [3, 4, 2], tmp_path / "s.json", "json").read_text())
    assert out["level_sizes"] == [3, 4, 2] and out["items"] == records
    path = export_sids(ds, sids, [3, 4, 2], tmp_path / "s.index.json", "index-json")
    assert np.array_equal(read_index_json(path, ds), sids)
    with pytest.raises(ValueError, match="format: expected one of json, parquet, index-json"):
        export_sids(ds, sids, [3, 4, 2], tmp_path / "s.csv", "csv")


def test_export_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    ds = toy_dataset()
    sids = np.array([[1, 2, 0], [1, 2, 1], [0, 3, 0], [2, 2, 0]])
    table = pq.read_table(export_sids(ds, sids, [3, 4, 2], tmp_path / "s.parquet", "parquet"))
    assert table.to_pylist() == sid_records(ds, sids)
    assert json.loads(table.schema.metadata[b"sidrec"]) == {"level_sizes": [3, 4, 2]}


def test_parquet_without_pyarrow_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'sidrec\[parquet\]'"):
        export_sids(toy_dataset(), np.zeros((4, 2), dtype=np.int64), [1, 4], tmp_path / "s.pq", "parquet")
    assert not (tmp_path / "s.pq").exists()
