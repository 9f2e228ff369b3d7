"""The notebook runs here take minutes each: marked slow (`pytest -m "not slow"` skips them); the hygiene checks of
the notebooks' source are not."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name.startswith(("test_notebook_0", "test_smol_notebooks")):
            item.add_marker(pytest.mark.slow)
