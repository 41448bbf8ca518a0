"""``python -m paddleslim_tools.demo`` = ``paddleslim-demo``."""
import sys

from .cli import main

sys.exit(main())
