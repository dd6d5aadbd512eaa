"""The ``ckpt`` command line: ``ls``, ``show``, ``rm``, ``gc``, ``verify`` and ``stats`` on any
store URL. typer and rich are imported here only, never by ``import ckpt_core``."""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``ckpt`` console script and of ``python -m ckpt_core.cli``."""
    from .app import app

    app(prog_name="ckpt")


__all__ = ["main"]
