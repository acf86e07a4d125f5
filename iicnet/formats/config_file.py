"""Config files: YAML (or JSON) on disk -> a validated :class:`~iicnet.model.config.Config`."""

from __future__ import annotations

from pathlib import Path

import yaml

from iicnet.model.config import Config, ConfigError, from_dict
from iicnet.storage import read_small_file

MAX_BYTES = 1 << 20
"""A config is a few hundred bytes; a bigger file is refused before it is parsed."""


def load(path: str | Path) -> Config:
    """Load a YAML (or JSON) config file; errors name the file and the field."""
    path = Path(path)
    try:
        data = read_small_file(path, MAX_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // 1024} KiB; not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text config file ({exc.reason})") from exc
    if "\0" in text:
        raise ConfigError(f"{path}: not a text config file (it holds NUL bytes)")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not a config file (nested too deeply)") from None
    try:
        return from_dict(raw, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
