"""`python -m resgraph` runs the command-line interface."""

from .cli import entry

entry()
