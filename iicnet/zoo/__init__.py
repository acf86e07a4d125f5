"""The model zoo: trained models shipped inside the package, loadable by name with no
registry and no training (``zoo:NAME`` wherever a model is given).

Each model is a folder ``iicnet/zoo/models/NAME/``: ``model.safetensors`` and ``config.json``
(a checkpoint, :mod:`iicnet.formats.checkpoint`), ``card.json`` (what made it and how it
scores: the data, steps and time of its training, and the held-out numbers of
``bench/zoo.py``) and ``complete.json``, the size and sha256 of every other file. A zoo
folder without ``complete.json``, or whose files do not match it, is refused: a model
loaded by name is always the one that was measured.

::

    from iicnet import zoo
    zoo.names()                 # ["video-k3-m", ...]
    zoo.card("video-k3-m")      # {"scores": {...}, "training": {...}, ...}
    folder = zoo.folder("video-k3-m")   # verified; checkpoint.load(folder) builds it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iicnet.formats import checkpoint

SCHEME = "zoo:"
MODELS = Path(__file__).resolve().parent / "models"
CARD = "card.json"


class ZooError(LookupError):
    """An unknown zoo name, or a zoo folder that is incomplete or does not match its
    checksums; the message says which."""


def names() -> list[str]:
    """The shipped models, by name."""
    if not MODELS.is_dir():
        return []
    return sorted(p.name for p in MODELS.iterdir()
                  if p.is_dir() and (p / checkpoint.CONFIG).is_file())


def name_of(uri: str) -> str:
    """``zoo:NAME`` -> ``NAME``."""
    return uri.removeprefix(SCHEME).strip()


def folder(name: str) -> Path:
    """The verified folder of zoo model ``name`` (``zoo:`` prefix allowed)."""
    name = name_of(name)
    known = names()
    if name not in known:
        listed = ", ".join(known) or "none are installed"
        raise ZooError(f"{SCHEME}{name}: no such zoo model (shipped: {listed}; "
                       f"`iicnet info {SCHEME}` lists them with their scores)")
    path = MODELS / name
    if not (path / checkpoint.MARKER).is_file():
        raise ZooError(f"{SCHEME}{name}: {path} has no {checkpoint.MARKER}, so its files "
                       "cannot be checked; reinstall iicnet")
    try:
        checkpoint.verify(path)
    except checkpoint.CheckpointError as exc:
        raise ZooError(f"{SCHEME}{name}: {exc}; reinstall iicnet") from None
    return path


def card(name: str) -> dict[str, Any]:
    """The model card of zoo model ``name`` (verified with its folder)."""
    path = folder(name) / CARD
    try:
        data = checkpoint.read_json(path)
    except checkpoint.CheckpointError as exc:
        raise ZooError(f"{SCHEME}{name_of(name)}: {exc}") from None
    if not isinstance(data, dict):
        raise ZooError(f"{path}: not a model card (expected a JSON object)")
    return data
