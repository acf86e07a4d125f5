"""Answering serving requests (what ``mlflow models serve`` hands a model) with a Converter.

The served model (:mod:`iicnet.registry.pyfunc`) calls :func:`handle` with its converter; the
converter itself knows nothing of serving."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from iicnet.convert.converter import Converter
from iicnet.formats import embedding_png
from iicnet.formats.imagefiles import InputError, open_image


def handle(converter: Converter, request: Any) -> list[dict[str, Any]]:
    """Answer serving requests: records with ``images`` (K base64 image files) get
    ``{"embedding": base64 PNG}``; records with ``embedding`` (a base64 PNG) get
    ``{"images": [K base64 PNGs], "names": [...]}``. ``request``: a pandas DataFrame
    (what ``mlflow models serve`` makes of ``dataframe_records``) or a list of dicts."""
    records = request.to_dict("records") if hasattr(request, "to_dict") else list(request)
    return [_handle_one(converter, i, record) for i, record in enumerate(records)]


def _handle_one(converter: Converter, index: int, record: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    def present(key: str) -> bool:
        value = record.get(key)
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    def png(array: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    if present("images"):
        images = []
        for j, item in enumerate(record["images"]):
            label = f"record {index} image {j}"
            try:
                with open_image(base64.b64decode(item)) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except (ValueError, OSError) as exc:
                raise InputError(f"{label}: not a base64 image file ({exc})") from exc
        pixels, info = converter.embed_pixels(
            images, labels=[f"record {index} image {j}" for j in range(len(images))])
        data = embedding_png.encode(pixels, info)
        return {"embedding": base64.b64encode(data).decode()}
    if present("embedding"):
        try:
            data = base64.b64decode(record["embedding"])
        except ValueError as exc:
            raise InputError(f"record {index}: embedding is not base64 ({exc})") from exc
        restored = converter.restore(data)
        return {"images": [png(image) for image in restored], "names": converter.names}
    raise InputError(f"record {index}: expected an 'images' list or an 'embedding' field, "
                     f"got {sorted(record)}")
