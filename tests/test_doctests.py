"""The default run includes the docstring examples of sidrec/ as doctests, so an example that stops running
fails `make test`; only examples marked ``# doctest: +SKIP`` (a trained run, a GPU, a dataset, the network) are
exempt. This guards the pytest settings in pyproject.toml that make it so."""


def test_default_run_collects_the_docstring_examples(pytestconfig):
    assert "sidrec" in pytestconfig.getini("testpaths")
    assert "--doctest-modules" in pytestconfig.getini("addopts")
