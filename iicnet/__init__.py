"""IICNet: many images in one ordinary-looking PNG, and back.

``iicnet.load(MODEL)`` gives a :class:`~iicnet.convert.Converter` (``embed`` / ``restore``);
it is imported on first use, so ``import iicnet`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iicnet.app.api import load

__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from iicnet.app.api import load

        return load
    raise AttributeError(f"module 'iicnet' has no attribute {name!r}")
