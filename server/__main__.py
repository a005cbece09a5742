"""``python -m server``: the same as the ``headcast`` command."""

import sys

from server.cli import main

sys.exit(main())
