"""``python -m headcast.server``: the same as the ``headcast`` command."""

import sys

from headcast.server.cli import main

sys.exit(main())
