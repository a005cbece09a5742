"""headcast's HTTP side: FastAPI app factory, settings, routes, metrics and the CLI."""
