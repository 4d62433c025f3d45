"""Error types raised by infobatch."""

from __future__ import annotations

__all__ = ["InfoBatchError"]


class InfoBatchError(RuntimeError):
    """API misuse: a call made in the wrong order or state (bad values raise ``ValueError``)."""
