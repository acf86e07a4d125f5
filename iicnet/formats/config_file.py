"""Config files: YAML (or JSON) on disk -> a validated :class:`~iicnet.model.config.Config`."""

from __future__ import annotations

from pathlib import Path

import yaml

from iicnet.model.config import Config, ConfigError, from_dict


def load(path: str | Path) -> Config:
    """Load a YAML (or JSON) config file; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text config file ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return from_dict(raw, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
