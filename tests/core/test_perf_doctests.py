"""The docstring examples of the threading, distributed-selection and collectives modules run as written."""
import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["paddleslim_static.core.threads", "paddleslim_static.core.distributed",
                                  "paddleslim_static.collectives", "paddleslim_static.core.kernels"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
