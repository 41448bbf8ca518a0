"""Where the tests and the repository are, for tests in any subfolder (tests/core, tests/static, ...)."""
import os

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
