"""The examples in the data modules' docstrings are true (they document exact inputs and outputs)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["errors", "formats", "masks", "render", "report", "spans", "templates", "tools", "reasoning"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"sftlab.data.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
