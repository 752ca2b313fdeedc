"""``python -m minireptile`` is the ``minireptile`` command."""
import sys

from .cli import main

sys.exit(main())
