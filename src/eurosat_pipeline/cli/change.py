"""``eurosat change BEFORE AFTER --out change.tif``: land-use change between two dates."""

from __future__ import annotations

import argparse


def add_change(commands: argparse._SubParsersAction) -> None:
    """The ``change`` subcommand (being built: see the change room)."""
    return None
