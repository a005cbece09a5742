"""The ``headcast`` subcommands: one module each, with ``add_parser(subparsers)`` and ``run``."""
