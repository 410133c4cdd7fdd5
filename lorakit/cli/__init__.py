"""The `lorakit` command line: a thin shell over the stage functions.

`lorakit.cli.app` holds the Typer app and its one error boundary; each other module registers the commands of one
concern, imported here in the order `lorakit --help` lists them. Heavy libraries (torch, transformers, trl) are
imported inside the commands, so `lorakit --help` stays instant.
"""

from lorakit.cli import chat, export, inspect, train  # noqa: E402,F401  (each registers its commands)
from lorakit.cli.app import COMMANDS, app, main

__all__ = ["COMMANDS", "app", "main"]
