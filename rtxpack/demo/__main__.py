"""``python -m rtxpack.demo``: the farm-to-PC story (see :mod:`rtxpack.demo.flow`)."""
import sys

from .flow import main

sys.exit(main())
