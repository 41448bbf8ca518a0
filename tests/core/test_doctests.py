"""The runnable examples in the docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = [
    "paddleslim_static.core.selection", "paddleslim_static.core.scores", "paddleslim_static.core.engine",
    "paddleslim_static.core.schedule", "paddleslim_static.core.density", "paddleslim_static.mask_pass",
    "paddleslim_static.pruner", "paddleslim_dygraph.pruner", "paddleslim_static.core.pruner",
    "paddleslim_static.core.naming", "paddleslim_static.core.packing", "paddleslim_static.core.params",
    "paddleslim_static.programs", "paddleslim_static.folding", "paddleslim_static.core.backend",
    "paddleslim_static.core.state", "paddleslim_static.device_engine", "paddleslim_static.device_masks", "paddleslim_static.traffic",
    "paddleslim_static.core.options", "paddleslim_static.core.validation", "paddleslim_static.mask_repr",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
