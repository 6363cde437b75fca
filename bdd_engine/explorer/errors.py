"""The explorer's one error type (database, App, bad input); imports nothing."""

from __future__ import annotations


class ExplorerError(RuntimeError):
    """Raised with a human-readable cause and fix (database, App, bad input)."""
