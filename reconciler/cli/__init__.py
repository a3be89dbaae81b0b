"""The command line: parser, commands, output; no logic of its own."""

from reconciler.cli.main import main

__all__ = ["main"]
