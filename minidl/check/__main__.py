"""``python -m minidl.check``: see ``minidl/check/__init__.py``."""

import sys

from minidl.check import main

sys.exit(main())
