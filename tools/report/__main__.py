"""``python -m paddleslim_tools.report`` = ``paddleslim-report``."""
import sys

from .cli import main

sys.exit(main())
