"""Hostile input corpus: every loader and file format sidrec reads, fed broken and malicious files.

Each case writes a small valid dataset into ``tmp_path``, then replaces or adds one file with hostile bytes. The
loader must raise ``ValueError`` whose message names the file and the line (or field), must not run anything
the file contains, and must write nothing (loaders only read; the folder is unchanged afterwards).
"""

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from sidrec.config import ConfigError, load_config
from sidrec.data.loaders import load_dataset
from sidrec.embeddings import load_npy_embeddings

BAD_UTF8 = b"\xff\xfe\xc3\x28"
BOM = "\ufeff".encode()
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_JUNK = "x" * 2_000_000


def gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def lines(*rows: str) -> bytes:
    return "".join(r + "\n" for r in rows).encode()


# -- valid baselines, one per format ----------------------------------------------------------------------------

S3REC = {
    "Toy.txt": lines("1 1 2 3", "2 3 2"),
    "Toy_datamaps.json": json.dumps(
        {"id2item": {"1": "A1", "2": "A2", "3": "A3"}, "id2user": {"1": "U1", "2": "U2"}}
    ).encode(),
    "Toy_item2attributes.json": json.dumps({"1": [1, 2], "2": [2]}).encode(),
    "Toy_item_attributes_text.jsonl": lines(
        '{"item_id": 1, "asin": "A1", "brand": "OPI", "categories": ["x"]}'
    ),
}
LCREC = {
    "Toy.inter.json": json.dumps({"0": [0, 1, 2], "1": [2, 1]}).encode(),
    "Toy.item.json": json.dumps({"0": {"title": "a"}, "1": {"title": "b"}, "2": {"title": "c"}}).encode(),
    "Toy.item2id": lines("A0\t0", "A1\t1", "A2\t2"),
}
RECBOLE = {
    "toy.inter": lines(
        "user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\t1", "u1\ti2\t2", "u2\ti2\t1"
    ),
    "toy.item": lines("item_id:token\ttitle:token_seq", "i1\tOne", "i2\tTwo"),
}


def review_2014(user: str, item: str, t) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t})


def review_2023(user: str, item: str, t) -> str:
    return json.dumps({"user_id": user, "parent_asin": item, "timestamp": t})


AMAZON2014 = {
    "reviews_Toy_5.json.gz": gz(
        lines(*(review_2014(f"u{u}", f"i{i}", 10 * u + i) for u in range(3) for i in range(3)))
    ),
    "meta_Toy.json.gz": gz(lines(*(str({"asin": f"i{i}", "title": f"T{i}"}) for i in range(3)))),
}
AMAZON2023 = {
    "Toy.jsonl": lines(*(review_2023(f"u{u}", f"i{i}", 10 * u + i) for u in range(3) for i in range(3))),
    "meta_Toy.jsonl": lines(*(json.dumps({"parent_asin": f"i{i}", "title": f"T{i}"}) for i in range(3))),
}
BASE = {
    "s3rec": S3REC,
    "lcrec": LCREC,
    "recbole": RECBOLE,
    "amazon2014": AMAZON2014,
    "amazon2023": AMAZON2023,
}
OPTIONS = {"amazon2014": {"min_interactions": 2}, "amazon2023": {"min_interactions": 2}}

PWNED = "/tmp/sidrec-hostile-pwned"  # created only if a loader ever executed file contents
EVAL_PAYLOAD = f"__import__('os').system('touch {PWNED}')"

# (case id, format, {file: hostile bytes}, substring the message must contain: file and line / field)
CASES = [
    # S3Rec txt
    ("s3rec-empty", "s3rec", {"Toy.txt": b""}, "Toy.txt: empty file"),
    ("s3rec-blank-lines", "s3rec", {"Toy.txt": b"\n \n\t\n"}, "Toy.txt: empty file"),
    ("s3rec-non-utf8", "s3rec", {"Toy.txt": b"1 1 2\n2 " + BAD_UTF8 + b"\n"}, "Toy.txt:2: not UTF-8"),
    ("s3rec-no-items", "s3rec", {"Toy.txt": lines("1 1 2", "2")}, "Toy.txt:2: user 2 has an empty history"),
    ("s3rec-word", "s3rec", {"Toy.txt": lines("1 1 two")}, "Toy.txt:1: id 'two'"),
    ("s3rec-float", "s3rec", {"Toy.txt": lines("1 1 2.5")}, "Toy.txt:1: id '2.5'"),
    ("s3rec-negative", "s3rec", {"Toy.txt": lines("1 -1 2")}, "Toy.txt:1: id '-1'"),
    ("s3rec-zero-id", "s3rec", {"Toy.txt": lines("1 0 2")}, "Toy.txt:1: id 0 is out of range"),
    ("s3rec-unicode-digit", "s3rec", {"Toy.txt": lines("1 1 \u0663")}, "Toy.txt:1: id"),
    ("s3rec-dup-user", "s3rec", {"Toy.txt": lines("1 1 2", "1 2 3")}, "Toy.txt:2: duplicate user 1"),
    ("s3rec-huge-line", "s3rec", {"Toy.txt": lines("1 1 2", HUGE_JUNK)}, "Toy.txt:2: id 'xxxx"),
    (
        "s3rec-id-beyond-table",
        "s3rec",
        {"Toy.txt": lines("1 1 2", "2 999999999999")},
        "Toy.txt:2: item id 999999999999",
    ),
    (
        "s3rec-id-missing-in-maps",
        "s3rec",
        {"Toy.txt": lines("1 1 2 4")},
        "Toy_datamaps.json: id2item has no ASIN for item id 4",
    ),
    (
        "s3rec-user-missing-in-maps",
        "s3rec",
        {"Toy.txt": lines("1 1 2", "3 1")},
        "Toy_datamaps.json: id2user has no key for user id 3",
    ),
    # datamaps / attributes json
    (
        "maps-truncated",
        "s3rec",
        {"Toy_datamaps.json": S3REC["Toy_datamaps.json"][:-9]},
        "Toy_datamaps.json:1:",
    ),
    (
        "maps-non-utf8",
        "s3rec",
        {"Toy_datamaps.json": b'{"id2item": {"1": "' + BAD_UTF8 + b'"}}'},
        "Toy_datamaps.json: not UTF-8",
    ),
    (
        "maps-dup-key",
        "s3rec",
        {"Toy_datamaps.json": b'{"id2item": {"1": "A1", "1": "B1"}, "id2user": {}}'},
        "Toy_datamaps.json: duplicate key '1'",
    ),
    ("maps-list", "s3rec", {"Toy_datamaps.json": b"[1, 2]"}, "Toy_datamaps.json: missing object 'id2item'"),
    (
        "maps-value-int",
        "s3rec",
        {"Toy_datamaps.json": b'{"id2item": {"1": 5}, "id2user": {}}'},
        "Toy_datamaps.json: id2item['1']",
    ),
    (
        "maps-key-word",
        "s3rec",
        {"Toy_datamaps.json": b'{"id2item": {"one": "A"}, "id2user": {}}'},
        "Toy_datamaps.json: id2item['one']",
    ),
    ("maps-deep", "s3rec", {"Toy_datamaps.json": DEEP.encode()}, "Toy_datamaps.json: nested too deeply"),
    (
        "maps-id-beyond-table",
        "s3rec",
        {
            "Toy_datamaps.json": b'{"id2item": {"1": "A", "88888888888": "B"}, "id2user": {"1": "U1", "2": "U2"}}'
        },
        "Toy_datamaps.json: item id 88888888888",
    ),
    ("maps-empty", "s3rec", {"Toy_datamaps.json": b""}, "Toy_datamaps.json:1:1: invalid JSON"),
    (
        "maps-nan-id",
        "s3rec",
        {"Toy_datamaps.json": b'{"id2item": {"NaN": "A"}, "id2user": {}}'},
        "Toy_datamaps.json: id2item['NaN']",
    ),
    (
        "attrs-not-list",
        "s3rec",
        {"Toy_item2attributes.json": b'{"1": 3}'},
        "Toy_item2attributes.json: item '1'",
    ),
    (
        "attrs-nan",
        "s3rec",
        {"Toy_item2attributes.json": b'{"1": [NaN]}'},
        "Toy_item2attributes.json: item '1': id nan",
    ),
    (
        "attrs-inf",
        "s3rec",
        {"Toy_item2attributes.json": b'{"1": [Infinity]}'},
        "Toy_item2attributes.json: item '1': id inf",
    ),
    (
        "attrs-bool",
        "s3rec",
        {"Toy_item2attributes.json": b'{"1": [true]}'},
        "Toy_item2attributes.json: item '1': id True",
    ),
    (
        "attrs-item-zero",
        "s3rec",
        {"Toy_item2attributes.json": b'{"0": [1]}'},
        "Toy_item2attributes.json: item '0'",
    ),
    (
        "attrs-id-beyond-table",
        "s3rec",
        {"Toy_item2attributes.json": b'{"99999999999": [1]}'},
        "Toy_item2attributes.json: item id 99999999999",
    ),
    (
        "attrs-array",
        "s3rec",
        {"Toy_item2attributes.json": b"[[1]]"},
        "Toy_item2attributes.json: expected a JSON object",
    ),
    (
        "text-not-object",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines("[1, 2]")},
        "Toy_item_attributes_text.jsonl:1: expected a JSON object",
    ),
    (
        "text-bad-json",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines('{"item_id": 1,')},
        "Toy_item_attributes_text.jsonl:1: invalid JSON",
    ),
    (
        "text-deep",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines(DEEP)},
        "Toy_item_attributes_text.jsonl:1: nested too deeply",
    ),
    (
        "text-brand-object",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines('{"item_id": 1, "brand": {"a": 1}}')},
        "Toy_item_attributes_text.jsonl:1: brand",
    ),
    (
        "text-repeated",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines('{"item_id": 1}', '{"item_id": 1}')},
        "Toy_item_attributes_text.jsonl:2: item_id 1",
    ),
    (
        "text-asin-mismatch",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines('{"item_id": 1, "asin": "ZZ"}')},
        "Toy_item_attributes_text.jsonl:1: asin 'ZZ'",
    ),
    (
        "text-item-id-string",
        "s3rec",
        {"Toy_item_attributes_text.jsonl": lines('{"item_id": "1; rm -rf /"}')},
        "Toy_item_attributes_text.jsonl:1: item_id",
    ),
    # LC-Rec json
    ("lcrec-empty", "lcrec", {"Toy.inter.json": b""}, "Toy.inter.json:1:1: invalid JSON"),
    (
        "lcrec-empty-object",
        "lcrec",
        {"Toy.inter.json": b"{}"},
        "Toy.inter.json: expected a non-empty JSON object",
    ),
    (
        "lcrec-list",
        "lcrec",
        {"Toy.inter.json": b"[[0, 1]]"},
        "Toy.inter.json: expected a non-empty JSON object",
    ),
    ("lcrec-empty-history", "lcrec", {"Toy.inter.json": b'{"0": []}'}, "Toy.inter.json: user '0'"),
    ("lcrec-history-string", "lcrec", {"Toy.inter.json": b'{"0": "0 1"}'}, "Toy.inter.json: user '0'"),
    ("lcrec-negative", "lcrec", {"Toy.inter.json": b'{"0": [0, -1]}'}, "Toy.inter.json: user '0': id -1"),
    ("lcrec-float", "lcrec", {"Toy.inter.json": b'{"0": [0, 1.0]}'}, "Toy.inter.json: user '0': id 1.0"),
    ("lcrec-null", "lcrec", {"Toy.inter.json": b'{"0": [0, null]}'}, "Toy.inter.json: user '0': id None"),
    ("lcrec-nan", "lcrec", {"Toy.inter.json": b'{"0": [0, NaN]}'}, "Toy.inter.json: user '0': id nan"),
    (
        "lcrec-dup-user",
        "lcrec",
        {"Toy.inter.json": b'{"0": [0], "0": [1]}'},
        "Toy.inter.json: duplicate key '0'",
    ),
    ("lcrec-truncated", "lcrec", {"Toy.inter.json": LCREC["Toy.inter.json"][:-3]}, "Toy.inter.json:1:"),
    ("lcrec-bom", "lcrec", {"Toy.inter.json": BOM + b'{"0": [0, 7]}'}, "Toy.item2id: no ASIN for item id 3"),
    (
        "lcrec-deep",
        "lcrec",
        {"Toy.inter.json": b'{"0": ' + DEEP.encode() + b"}"},
        "Toy.inter.json: nested too deeply",
    ),
    (
        "lcrec-id-beyond-table",
        "lcrec",
        {"Toy.inter.json": b'{"0": [0, 123456789012]}'},
        "Toy.inter.json: item id 123456789012",
    ),
    ("lcrec-item-not-object", "lcrec", {"Toy.item.json": b'{"0": "title"}'}, "Toy.item.json: item '0'"),
    (
        "lcrec-item-key-word",
        "lcrec",
        {"Toy.item.json": b'{"zero": {"title": "a"}}'},
        "Toy.item.json: item 'zero'",
    ),
    (
        "lcrec-item-title-number-list",
        "lcrec",
        {"Toy.item.json": b'{"0": {"title": [{"a": 1}]}}'},
        "Toy.item.json: item '0': title",
    ),
    (
        "lcrec-item2id-one-column",
        "lcrec",
        {"Toy.item2id": lines("A0 0")},
        "Toy.item2id:1: expected 'ASIN<TAB>item_idx'",
    ),
    (
        "lcrec-item2id-three-columns",
        "lcrec",
        {"Toy.item2id": lines("A0\t0\tx")},
        "Toy.item2id:1: expected 'ASIN<TAB>item_idx'",
    ),
    (
        "lcrec-item2id-dup",
        "lcrec",
        {"Toy.item2id": lines("A0\t0", "A0\t1")},
        "Toy.item2id:2: item 1 / ASIN 'A0' already mapped",
    ),
    ("lcrec-item2id-word", "lcrec", {"Toy.item2id": lines("A0\tzero")}, "Toy.item2id:1: id 'zero'"),
    (
        "lcrec-item2id-gap",
        "lcrec",
        {"Toy.item2id": lines("A0\t0", "A2\t2")},
        "Toy.item2id: no ASIN for item id 1",
    ),
    (
        "lcrec-item2id-non-utf8",
        "lcrec",
        {"Toy.item2id": b"A0\t0\n" + BAD_UTF8 + b"\t1\n"},
        "Toy.item2id:2: not UTF-8",
    ),
    ("lcrec-item2id-empty", "lcrec", {"Toy.item2id": b""}, "Toy.item2id: empty file"),
    # RecBole atomic files
    ("recbole-empty", "recbole", {"toy.inter": b""}, "toy.inter: empty file"),
    (
        "recbole-header-only",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token")},
        "toy.inter: no interactions",
    ),
    (
        "recbole-header-untyped",
        "recbole",
        {"toy.inter": lines("user_id\titem_id", "u1\ti1")},
        "toy.inter:1: header column 'user_id'",
    ),
    (
        "recbole-header-bad-type",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:blob", "u1\ti1")},
        "toy.inter:1: header column 'item_id:blob'",
    ),
    (
        "recbole-header-no-item",
        "recbole",
        {"toy.inter": lines("user_id:token\trating:float", "u1\t1")},
        "toy.inter:1: header has no 'item_id'",
    ),
    (
        "recbole-too-few-columns",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token", "u1")},
        "toy.inter:2: 1 columns, header has 2",
    ),
    (
        "recbole-too-many-columns",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token", "u1\ti1\tx")},
        "toy.inter:2: 3 columns",
    ),
    (
        "recbole-spaces-not-tabs",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token", "u1 i1")},
        "toy.inter:2: 1 columns",
    ),
    (
        "recbole-empty-user",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token", "\ti1")},
        "toy.inter:2: empty user_id",
    ),
    (
        "recbole-unknown-item",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token", "u1\ti9")},
        "toy.inter:2: item 'i9' is not in toy.item",
    ),
    (
        "recbole-time-word",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\tnoon")},
        "toy.inter:2: timestamp 'noon'",
    ),
    (
        "recbole-time-nan",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\tnan")},
        "toy.inter:2: timestamp 'nan'",
    ),
    (
        "recbole-time-inf",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\t-inf")},
        "toy.inter:2: timestamp '-inf'",
    ),
    (
        "recbole-non-utf8",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token") + b"u1\t" + BAD_UTF8 + b"\n"},
        "toy.inter:2: not UTF-8",
    ),
    (
        "recbole-huge-line",
        "recbole",
        {"toy.inter": lines("user_id:token\titem_id:token", "u1\ti1", HUGE_JUNK)},
        "toy.inter:3: 1 columns",
    ),
    (
        "recbole-item-dup",
        "recbole",
        {"toy.item": lines("item_id:token\ttitle:token_seq", "i1\tA", "i1\tB")},
        "toy.item:3: item_id 'i1' is empty or repeated",
    ),
    (
        "recbole-item-header-only",
        "recbole",
        {"toy.item": lines("item_id:token\ttitle:token_seq")},
        "toy.item: no items",
    ),
    (
        "recbole-item-columns",
        "recbole",
        {"toy.item": lines("item_id:token\ttitle:token_seq", "i1")},
        "toy.item:2: 1 columns",
    ),
    # Amazon 2014: gzip reviews, Python-literal metadata
    (
        "a14-truncated-gzip",
        "amazon2014",
        {"reviews_Toy_5.json.gz": AMAZON2014["reviews_Toy_5.json.gz"][:-30]},
        "reviews_Toy_5.json.gz:6: cannot read the file (EOFError",
    ),
    (
        "a14-corrupt-gzip",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014("u", "i", 1)))[:12] + b"\x00" * 40},
        "reviews_Toy_5.json.gz:1: cannot read the file (BadGzipFile",
    ),
    (
        "a14-not-gzip",
        "amazon2014",
        {"reviews_Toy_5.json.gz": lines(review_2014("u", "i", 1))},
        "reviews_Toy_5.json.gz:1: cannot read",
    ),
    ("a14-empty-gzip", "amazon2014", {"reviews_Toy_5.json.gz": gz(b"")}, "reviews_Toy_5.json.gz: empty file"),
    ("a14-zero-bytes", "amazon2014", {"reviews_Toy_5.json.gz": b""}, "reviews_Toy_5.json.gz: empty file"),
    (
        "a14-gzip-non-utf8",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014("u", "i", 1)) + BAD_UTF8)},
        "reviews_Toy_5.json.gz:2: not UTF-8",
    ),
    (
        "a14-review-list",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines("[1, 2, 3]"))},
        "reviews_Toy_5.json.gz:1: expected a JSON object",
    ),
    (
        "a14-review-missing-field",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines('{"reviewerID": "u", "asin": "i"}'))},
        "reviews_Toy_5.json.gz:1: field 'unixReviewTime'",
    ),
    (
        "a14-review-user-number",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014(1, "i", 1)))},  # type: ignore[arg-type]
        "reviews_Toy_5.json.gz:1: field 'reviewerID'",
    ),
    (
        "a14-review-time-string",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014("u", "i", "1")))},
        "reviews_Toy_5.json.gz:1: field 'unixReviewTime'",
    ),
    (
        "a14-review-time-inf",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014("u", "i", float("inf"))))},
        "reviews_Toy_5.json.gz:1: field 'unixReviewTime' is not finite",
    ),
    (
        "a14-review-huge-line",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014("u", "i", 1), HUGE_JUNK))},
        "reviews_Toy_5.json.gz:2: invalid JSON",
    ),
    (
        "a14-review-deep",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(DEEP))},
        "reviews_Toy_5.json.gz:1: nested too deeply",
    ),
    (
        "a14-kcore-empty",
        "amazon2014",
        {"reviews_Toy_5.json.gz": gz(lines(review_2014("u", "i", 1)))},
        "reviews_Toy_5.json.gz: no interactions left after 2-core",
    ),
    (
        "a14-meta-eval",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines(EVAL_PAYLOAD))},
        "meta_Toy.json.gz:1: not a plain Python literal",
    ),
    (
        "a14-meta-eval-in-dict",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': 'i0', 'title': " + EVAL_PAYLOAD + "}"))},
        "meta_Toy.json.gz:1: not a plain Python literal",
    ),
    (
        "a14-meta-lambda",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': (lambda: 1)()}"))},
        "meta_Toy.json.gz:1: not a plain",
    ),
    (
        "a14-meta-dunder",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("().__class__.__bases__[0].__subclasses__()"))},
        "meta_Toy.json.gz:1: not a plain",
    ),
    (
        "a14-meta-fstring",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': f'{__import__(\"os\").getcwd()}'}"))},
        "meta_Toy.json.gz:1: not a plain",
    ),
    (
        "a14-meta-list",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("['i0', 'T']"))},
        "meta_Toy.json.gz:1: expected a dict literal",
    ),
    (
        "a14-meta-set",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'i0', 'T'}"))},
        "meta_Toy.json.gz:1: expected a dict literal",
    ),
    (
        "a14-meta-no-asin",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'title': 'T'}"))},
        "meta_Toy.json.gz:1: field 'asin'",
    ),
    (
        "a14-meta-dup",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': 'i0'}", "{'asin': 'i0'}"))},
        "meta_Toy.json.gz:2: item 'i0' already described",
    ),
    (
        "a14-meta-title-bytes",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': 'i0', 'title': b'x'}"))},
        "meta_Toy.json.gz:1: title",
    ),
    (
        "a14-meta-categories-str",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': 'i0', 'categories': 'x'}"))},
        "meta_Toy.json.gz:1: categories",
    ),
    (
        "a14-meta-deep",
        "amazon2014",
        {"meta_Toy.json.gz": gz(lines("{'asin': " + DEEP + "}"))},
        "meta_Toy.json.gz:1: not a plain",
    ),
    (
        "a14-meta-truncated-gzip",
        "amazon2014",
        {"meta_Toy.json.gz": AMAZON2014["meta_Toy.json.gz"][:-10]},
        "meta_Toy.json.gz:",
    ),
    (
        "a14-meta-non-utf8",
        "amazon2014",
        {"meta_Toy.json.gz": gz(b"{'asin': '" + BAD_UTF8 + b"'}\n")},
        "meta_Toy.json.gz:1: not UTF-8",
    ),
    # Amazon 2023 jsonl
    ("a23-empty", "amazon2023", {"Toy.jsonl": b""}, "Toy.jsonl: empty file"),
    (
        "a23-bad-json",
        "amazon2023",
        {"Toy.jsonl": lines(review_2023("u", "i", 1), '{"user_id": ')},
        "Toy.jsonl:2: invalid JSON",
    ),
    (
        "a23-time-bool",
        "amazon2023",
        {"Toy.jsonl": lines(review_2023("u", "i", True))},
        "Toy.jsonl:1: field 'timestamp'",
    ),
    (
        "a23-time-nan",
        "amazon2023",
        {"Toy.jsonl": lines(review_2023("u", "i", float("nan")))},
        "Toy.jsonl:1: field 'timestamp' is not finite",
    ),
    (
        "a23-item-empty",
        "amazon2023",
        {"Toy.jsonl": lines(review_2023("u", "", 1))},
        "Toy.jsonl:1: field 'parent_asin'",
    ),
    (
        "a23-item-list",
        "amazon2023",
        {"Toy.jsonl": lines(review_2023("u", ["i"], 1))},
        "Toy.jsonl:1: field 'parent_asin'",
    ),  # type: ignore[arg-type]
    (
        "a23-non-utf8",
        "amazon2023",
        {"Toy.jsonl": lines(review_2023("u", "i", 1)) + BAD_UTF8},
        "Toy.jsonl:2: not UTF-8",
    ),
    (
        "a23-meta-string",
        "amazon2023",
        {"meta_Toy.jsonl": lines('"i0"')},
        "meta_Toy.jsonl:1: expected a JSON object",
    ),
    (
        "a23-meta-title-object",
        "amazon2023",
        {"meta_Toy.jsonl": lines('{"parent_asin": "i0", "title": {"x": 1}}')},
        "meta_Toy.jsonl:1: title",
    ),
    (
        "a23-meta-dup",
        "amazon2023",
        {"meta_Toy.jsonl": lines('{"parent_asin": "i0"}', '{"parent_asin": "i0"}')},
        "meta_Toy.jsonl:2: item 'i0' already described",
    ),
    (
        "a23-meta-eval-string-stays-data",
        "amazon2023",
        {"meta_Toy.jsonl": lines('{"parent_asin": 7}')},
        "meta_Toy.jsonl:1: field 'parent_asin'",
    ),
]


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("fmt", list(BASE))
def test_baselines_are_valid(tmp_path, fmt):
    _write(tmp_path, BASE[fmt])
    assert load_dataset(fmt, tmp_path, **OPTIONS.get(fmt, {})).num_items >= 2


@pytest.mark.parametrize("case, fmt, files, where", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_is_refused_naming_file_and_line(tmp_path, case, fmt, files, where):
    _write(tmp_path, {**BASE[fmt], **files})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError) as info:
        load_dataset(fmt, tmp_path, **OPTIONS.get(fmt, {}))
    message = str(info.value)
    assert where in message, message[:500]
    assert str(tmp_path) in message  # the full path, not just a base name
    assert len(message) < 2000  # a huge hostile line is not echoed back whole
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written or changed
    assert not Path(PWNED).exists()


@pytest.mark.parametrize(
    "fmt, name",
    [
        ("s3rec", "Toy.txt"),
        ("recbole", "toy.inter"),
        ("lcrec", "Toy.item2id"),
        ("amazon2023", "Toy.jsonl"),
        ("s3rec", "Toy_datamaps.json"),
    ],
)
def test_utf8_bom_and_crlf_are_read_as_plain_text(tmp_path, fmt, name):
    _write(tmp_path, BASE[fmt])
    expected = load_dataset(fmt, tmp_path, **OPTIONS.get(fmt, {}))
    data = BASE[fmt][name]
    (tmp_path / name).write_bytes(BOM + data.replace(b"\n", b"\r\n"))
    got = load_dataset(fmt, tmp_path, **OPTIONS.get(fmt, {}))
    assert got.item_keys == expected.item_keys and got.user_keys == expected.user_keys
    assert [s.tolist() for s in got.sequences] == [s.tolist() for s in expected.sequences]
    assert got.item_text == expected.item_text


# -- embeddings .npy --------------------------------------------------------------------------------------------


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


GOOD = np.ones((3, 4), dtype=np.float32)
NAN_ROW = GOOD.copy()
NAN_ROW[1, 2] = np.nan
INF_ROW = GOOD.copy()
INF_ROW[2, 0] = -np.inf
HUGE_HEADER = _npy(GOOD).replace(b"(3, 4)", b"(3000000000000, 4000000)", 1)

NPY_CASES = [
    ("empty", b"", "not a readable .npy"),
    ("random-bytes", b"\x93NUMPY garbage", "not a readable .npy"),
    ("truncated", _npy(GOOD)[:-7], "not a readable .npy"),
    ("pickle", _npy(np.array([{"x": 1}, None, 3], dtype=object), allow_pickle=True), "not a readable .npy"),
    ("npz", b"PK\x03\x04" + b"\x00" * 40, "not a readable .npy"),
    ("1-d", _npy(np.ones(3, dtype=np.float32)), "shape (3,)"),
    ("3-d", _npy(np.ones((3, 4, 1), dtype=np.float32)), "shape (3, 4, 1)"),
    ("wrong-rows", _npy(np.ones((5, 4), dtype=np.float32)), "shape (5, 4), expected (3, D)"),
    ("zero-cols", _npy(np.ones((3, 0), dtype=np.float32)), "shape (3, 0)"),
    ("int", _npy(np.ones((3, 4), dtype=np.int64)), "dtype int64"),
    ("complex", _npy(np.ones((3, 4), dtype=np.complex64)), "dtype complex64"),
    ("bool", _npy(np.ones((3, 4), dtype=bool)), "dtype bool"),
    ("structured", _npy(np.zeros((3, 4), dtype=[("a", "f4")])), "dtype"),
    ("nan", _npy(NAN_ROW), "row 1 contains NaN or inf"),
    ("inf", _npy(INF_ROW), "row 2 contains NaN or inf"),
    ("huge-header", HUGE_HEADER, "not a readable .npy"),
]


@pytest.mark.parametrize("case, data, words", NPY_CASES, ids=[c[0] for c in NPY_CASES])
def test_hostile_npy_is_refused(tmp_path, case, data, words):
    path = tmp_path / "emb.npy"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        load_npy_embeddings(path, num_items=3)
    assert str(path) in str(info.value) and words in str(info.value)


# -- configs YAML -----------------------------------------------------------------------------------------------

YAML_CASES = [
    ("empty-is-defaults", b"", None),
    ("not-yaml", b"train: [1, 2\n", "invalid YAML"),
    ("tabs", b"train:\n\tepochs: 2\n", "invalid YAML"),
    ("top-level-list", b"- 1\n- 2\n", "top level must be a mapping"),
    ("non-utf8", b"seed: 1\nrun_dir: " + BAD_UTF8 + b"\n", "not UTF-8"),
    ("unknown-key", b"train:\n  epochz: 3\n", "train.epochz"),
    ("wrong-type", b"train:\n  epochs: three\n", "train.epochs"),
    ("section-not-mapping", b"train: 3\n", "train: expected a mapping"),
    ("duplicate-key", b"seed: 1\nseed: 2\n", ":2: invalid YAML: duplicate key 'seed'"),
    (
        "duplicate-nested-key",
        b"train:\n  epochs: 1\n  epochs: 2\n",
        ":3: invalid YAML: duplicate key 'epochs'",
    ),
    ("nan", b"train:\n  lr: .nan\n", "train.lr"),
    ("inf", b"model:\n  dropout: .inf\n", "model.dropout"),
    ("python-object-tag", b"seed: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    (
        "alias-bomb",
        b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"tokenizer:\n  params: {x: [*b, *b, *b, *b, *b, *b, *b, *b, *b]}\n",
        ":2: invalid YAML: aliases",
    ),
    ("bool-for-int", b"seed: true\n", "seed"),
    ("huge-int", b"train:\n  epochs: 99999999999999999999999999999\n", None),
    ("huge-int-for-float", b"train:\n  lr: 1" + b"0" * 400 + b"\n", "train.lr: must be a finite number"),
    ("codebook-zero", b"tokenizer:\n  params: {codebook_size: 0}\n", "tokenizer.params.codebook_size"),
    ("unknown-tokenizer-param", b"tokenizer:\n  params: {codebooks: 3}\n", "tokenizer.params.codebooks"),
    ("negative-history", b"data:\n  max_history: -3\n", "data.max_history"),
    ("bom", BOM + b"seed: 3\n", None),
]


@pytest.mark.parametrize("case, data, words", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_hostile_config_yaml(tmp_path, case, data, words):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    if words is None:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert words in str(info.value)
    if any(w in words for w in ("YAML", "UTF-8", "top level")):  # file-level problems name the file
        assert str(path) in str(info.value)  # key-level ones name the key


def hostile_case_count() -> int:
    """Total hostile cases in this corpus (reported in docs/reliability.md)."""
    return len(CASES) + len(NPY_CASES) + len(YAML_CASES)


def test_cli_prepare_reports_bad_line_and_writes_no_data(tmp_path, capsys):
    from sidrec.cli import main

    data = tmp_path / "data"
    data.mkdir()
    _write(data, {**RECBOLE, "toy.inter": lines("user_id:token\titem_id:token", "u1\ti1", "u2\ti1\textra")})
    run = tmp_path / "run"
    args = [
        "prepare",
        "configs/ml-100k-demo.yaml",
        f"data.path={data}",
        "data.format=recbole",
        f"run_dir={run}",
        f"cache_dir={tmp_path / 'cache'}",
        "--quiet",
    ]
    assert main(args) == 2
    assert f"{data / 'toy.inter'}:3: 3 columns, header has 2" in capsys.readouterr().err
    assert not (run / "data").exists() and not (run / "stages.json").exists()
