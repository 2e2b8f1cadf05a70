"""The ``edge-agent`` command line: parsing, calling the Python API, rendering (tables or ``--json``)."""

from edge_agent.cli.main import main

__all__ = ["main"]
