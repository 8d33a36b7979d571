"""Property-based fuzzing of every parser: whatever the bytes, a loader returns a Dataset or raises ValueError
(the documented error type, naming the file); never IndexError, UnicodeDecodeError, RecursionError, ...

Inputs are valid files of the hostile-input corpus mutated byte by byte (flips, insertions, deletions, cuts,
splices of tricky tokens), plus raw random bytes. CI runs ``FUZZ_EXAMPLES`` (200) examples per parser; the
``slow`` variant runs 5,000. Each test checks and prints (``pytest -s``) how many inputs it tried.
"""

import gzip
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_inputs import BASE, OPTIONS, _npy, gz

from sidrec.config import ConfigError, load_config
from sidrec.data.loaders import load_dataset
from sidrec.embeddings import load_npy_embeddings

FUZZ_EXAMPLES = 200
SLOW_EXAMPLES = 5000
TOKENS = [
    b"\n",
    b"\t",
    b" ",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\x00",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"'",
    b":",
    b",",
    b"-1",
    b"0",
    b"99999999999999999999",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b"1e999",
    b"\\u0000",
    b"__import__('os')",
    b"*a",
    b"&a",
    b"!!python/object",
    b"[" * 50,
    b"\xc3\x28",
]


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """``base`` with a few random edits, or (sometimes) plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "token"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from(TOKENS))
    return bytes(data)


TRIED: Counter = Counter()  # inputs tried per parser


def _report(parser: str, examples: int) -> None:
    # Hypothesis may stop early only if it runs out of distinct inputs, which these strategies do not.
    assert TRIED[parser] >= examples, TRIED[parser]
    print(f"\nFUZZ {parser}: {TRIED[parser]} inputs, only the documented error type raised")


# (format, file name) of every file a loader reads; gzip files are fuzzed both before and after compression.
TARGETS = [(fmt, name) for fmt, files in BASE.items() for name in files]


def _check_loader(fmt: str, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other, content in BASE[fmt].items():
            (folder / other).write_bytes(content)
        (folder / name).write_bytes(data)
        try:
            load_dataset(fmt, folder, **OPTIONS.get(fmt, {}))
        except ValueError as e:
            assert str(folder) in str(e), str(e)[:300]
            assert len(str(e)) < 3000


def _fuzz_loader(fmt: str, name: str, examples: int) -> None:
    base = BASE[fmt][name]
    plain = gzip.decompress(base) if name.endswith(".gz") else base
    inputs = st.one_of(mutated(plain).map(gz), mutated(base)) if name.endswith(".gz") else mutated(base)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(inputs)
    def check(data: bytes) -> None:
        TRIED[f"{fmt}:{name}"] += 1
        _check_loader(fmt, name, data)

    TRIED[f"{fmt}:{name}"] = 0
    check()
    _report(f"{fmt}:{name}", examples)


@pytest.mark.parametrize("fmt, name", TARGETS, ids=[f"{f}:{n}" for f, n in TARGETS])
def test_fuzz_loader(fmt, name):
    _fuzz_loader(fmt, name, FUZZ_EXAMPLES)


def _fuzz_npy(examples: int) -> None:
    base = _npy(np.ones((3, 4), dtype=np.float32))

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(mutated(base))
    def check(data: bytes) -> None:
        TRIED["npy"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "emb.npy"
            path.write_bytes(data)
            try:
                out = load_npy_embeddings(path, num_items=3)
            except ValueError as e:
                assert str(path) in str(e)
            else:
                assert out.shape[0] == 3 and np.isfinite(out).all()

    TRIED["npy"] = 0
    check()
    _report("npy", examples)


def test_fuzz_npy():
    _fuzz_npy(FUZZ_EXAMPLES)


YAML_BASE = b"""seed: 3
data:
  name: toy
  max_history: 5
tokenizer:
  params: {num_levels: 2, codebook_size: 8}
train:
  epochs: 2
  lr: 0.001
eval:
  ks: [5, 10]
"""


def _fuzz_yaml(examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(mutated(YAML_BASE))
    def check(data: bytes) -> None:
        TRIED["config-yaml"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "c.yaml"
            path.write_bytes(data)
            try:
                load_config(path)
            except ConfigError:
                pass

    TRIED["config-yaml"] = 0
    check()
    _report("config-yaml", examples)


def test_fuzz_config_yaml():
    _fuzz_yaml(FUZZ_EXAMPLES)


def test_fuzz_json_values_in_lcrec_inter():
    """Structured fuzzing: any JSON value where the LC-Rec interactions belong."""
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=4),
        max_leaves=20,
    )

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(st.dictionaries(st.text(max_size=4), values, max_size=4) | values)
    def check(obj) -> None:
        TRIED["lcrec:json-values"] += 1
        _check_loader("lcrec", "Toy.inter.json", json.dumps(obj).encode())

    TRIED["lcrec:json-values"] = 0
    check()
    _report("lcrec:json-values", FUZZ_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, name", TARGETS, ids=[f"{f}:{n}" for f, n in TARGETS])
def test_fuzz_loader_long(fmt, name):
    _fuzz_loader(fmt, name, SLOW_EXAMPLES)


@pytest.mark.slow
def test_fuzz_npy_and_yaml_long():
    _fuzz_npy(SLOW_EXAMPLES)
    _fuzz_yaml(SLOW_EXAMPLES)
