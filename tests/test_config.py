import pytest

from sidrec.config import ConfigError, RunConfig, dump_config, load_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "data.name=beauty", "model.params.dropout=0.2", "eval.ks=[5, 10]"])
    assert cfg.train.epochs == 3 and cfg.data.name == "beauty" and cfg.model.params["dropout"] == 0.2
    assert cfg.eval.ks == [5, 10]
    assert isinstance(cfg, RunConfig)


def test_int_is_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=3", "train.epoch"),
        ("bogus=1", "bogus"),
        ("model.params.d_model=abc", "model.params.d_model"),
        ("train.bf16=3", "train.bf16"),
        ("train.epochs=0", "train.epochs"),
        ("data.max_history=0", "data.max_history"),
        ("eval.ks=[5, 50]", "eval.ks"),
        ("eval.beam_size=0", "eval.beam_size"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(None, ["seed=7", "tokenizer.params={codebook_size: 64}"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg
    assert again.tokenizer.params == {"codebook_size": 64}


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(p)


def test_presets_load():
    from pathlib import Path

    presets = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert len(presets) >= 6
    for p in presets:
        load_config(p)


def test_sasrec_section():
    cfg = load_config(None, ["sasrec.params.d_model=32", "sasrec.train.epochs=5"])
    assert cfg.sasrec.model_config(num_items=10).d_model == 32 and cfg.sasrec.train.epochs == 5
    with pytest.raises(ConfigError, match="sasrec"):
        load_config(None, ["sasrec.params.loss=bpr"])
    with pytest.raises(ConfigError, match="sasrec.train.epoch"):
        load_config(None, ["sasrec.train.epoch=5"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("tokenizer.params={codebook_size: 0}", "tokenizer.params.codebook_size"),
        ("tokenizer.params={num_levels: 0}", "tokenizer.params.num_levels"),
        ("tokenizer.name=vqvae", "tokenizer.name"),
        ("data.max_history=0", "data.max_history"),
        ("data.format=csv", "data.format"),
        ("train.patience=0", "train.patience"),
        ("train.eval_beam_size=0", "train.eval_beam_size"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("train.lr=.inf", "train.lr"),
        ("model.params.dropout=.nan", "model.params.dropout"),
        ("model.params.num_encoder_layers=0", "model.params.num_encoder_layers"),
        ("model.params.logit_temperature=0", "model.params.logit_temperature"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("embed.sources=[words]", "embed"),
        ("embed.batch_size=0", "embed"),
        ("sasrec.params.num_heads=3", "sasrec"),
        ("seed={a: &x 1, b: *x}", "aliases"),
    ],
)
def test_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_beam_larger_than_catalogue_fails_before_any_work(tiny_args, capsys):
    from sidrec.cli import main

    run, args = tiny_args
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "eval.beam_size=50", "eval.ks=[5, 50]"]) == 2
    assert "eval.beam_size: 50 is larger than the catalogue (40 items of dataset 'toy')" in capsys.readouterr().err
    assert not (run / "data").exists() and not (run / "stages.json").exists()
    assert not (run.parent / "cache" / "embeddings").exists()
    assert main(["train", "configs/ml-100k-demo.yaml", *args, "train.eval_beam_size=41"]) == 2
    assert "train.eval_beam_size: 41 is larger than the catalogue" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, option, valid", [
    ("s3rec", "min_interactions", "valid: name"),
    ("amazon2014", "min_interaction", "valid: name, min_interactions"),
    ("movielens_pypi", "names", "valid: name"),
])
def test_unknown_data_options_are_config_errors(fmt, option, valid, tiny_args, capsys):
    with pytest.raises(ConfigError, match=rf"unknown config key data\.options\.{option} for data\.format {fmt} "
                                          rf"\({valid}"):
        load_config(None, [f"data.format={fmt}", "data.path=x", f"data.options={{{option}: 5}}"])
    run, args = tiny_args
    from sidrec.cli import main

    assert main(["prepare", "configs/ml-100k-demo.yaml", *args, "data.options.nam=toy"]) == 2
    assert "data.options.nam" in capsys.readouterr().err


def test_model_params_are_checked_against_the_models_own_config_with_its_defaults():
    from sidrec.models.etegrec import ETEGRecConfig

    cfg = load_config(None, ["model.name=etegrec", "model.params.dropout=0.0"])
    built = cfg.model.model_config(level_sizes=[4, 4, 2], max_history=20, latent_dim=8, recon_dim=6)
    defaults = ETEGRecConfig(level_sizes=[4, 4, 2])
    assert isinstance(built, ETEGRecConfig) and built.dropout == 0.0
    assert (built.num_encoder_layers, built.d_ff, built.user_buckets) == (defaults.num_encoder_layers, defaults.d_ff,
                                                                          defaults.user_buckets)
    with pytest.raises(ConfigError, match=r"model\.params\.d_modle: unknown parameter of model\.name tiger "
                                          r"\(valid: d_model, "):
        load_config(None, ["model.params.d_modle=3"])
    with pytest.raises(ConfigError, match=r"model\.params\.level_sizes: set by the run"):
        load_config(None, ["model.params.level_sizes=[4, 4]"])
    with pytest.raises(ConfigError, match=r"model\.name: unknown recommender 'bert4rec' \(known: tiger, etegrec\)"):
        load_config(None, ["model.name=bert4rec"])
    with pytest.raises(ConfigError, match=r"schedule\.losses\.psa: needs a recommender with a preference head"):
        load_config(None, ["schedule.name=alternating", "schedule.losses={psa: {weight: 1.0}}"])


def test_etegrec_presets_restate_no_defaults():
    from pathlib import Path

    for p in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        cfg = load_config(p)
        if cfg.model.name == "etegrec":
            assert cfg.model.params == {}, p


def test_presets_resolve_by_name_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    from sidrec.config import preset_path, presets

    assert {"ml-100k-demo", "beauty", "office"} <= set(presets())
    assert load_config("ml-100k-demo") == load_config(presets()["ml-100k-demo"])
    with pytest.raises(FileNotFoundError, match="nor a preset name \\(presets: beauty, "):
        load_config("beuaty")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "beauty").write_text("seed: 7\n")  # a file of that name in the working directory
    assert preset_path("beauty").resolve() == tmp_path / "beauty" and load_config("beauty").seed == 7


def test_every_preset_is_listed_with_a_one_line_summary(capsys):
    from sidrec.cli import main
    from sidrec.config import preset_summary, presets

    for name, path in presets().items():
        summary = preset_summary(path)
        assert 10 < len(summary) < 120 and "METHODS" not in summary, (name, summary)
    assert main(["presets"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["name", "data", "tokenizer", "model", "what", "it", "is"]
    assert [r.split()[0] for r in rows[1 : 1 + len(presets())]] == list(presets())
    assert "ml-100k (movielens_pypi)  rqkmeans" in next(r for r in rows if r.startswith("ml-100k-demo "))


def test_a_run_config_of_an_earlier_version_still_loads(tmp_path):
    """config.yaml of a run made before schedule.frozen_encoder_layers / freeze_decoder were retired: their no-op
    values are dropped; a value that did something is an error naming what replaced the key."""
    path = tmp_path / "config.yaml"
    path.write_text("schedule:\n  name: two_stage\n  frozen_encoder_layers: 0\n  freeze_decoder: false\n")
    assert load_config(path).schedule.name == "two_stage"
    path.write_text("schedule:\n  frozen_encoder_layers: 3\n")
    with pytest.raises(ConfigError, match="frozen_encoder_layers.*frozen_tokenizer_layers"):
        load_config(path)
