

def test_code_version_hashes_the_data_subpackages_too():
    """A change in data/clean/*.py must invalidate tokenized caches (their results depend on it)."""
    from importlib import resources

    from sftlab.data.cache import _files

    names = [name for name, _ in _files(resources.files("sftlab").joinpath("data"), "data")]
    assert "data/clean/apply.py" in names and "data/render.py" in names
