"""``python -m paddleslim_tools.export`` = ``paddleslim-export``."""
import sys

from .cli import main

sys.exit(main())
