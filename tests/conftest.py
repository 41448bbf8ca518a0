"""Shared test set-up: the helpers in tests/ (nets, reference, paths, dist_*) import from every subfolder, and the
hypothesis profile."""
import os
import sys

from hypothesis import settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/core etc. import nets, reference, paths

settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
