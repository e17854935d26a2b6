"""Developer tooling (run as modules, e.g. ``python -m tools.certs``)."""
