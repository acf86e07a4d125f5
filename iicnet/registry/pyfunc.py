"""The MLflow pyfunc of an IICNet, logged as code (MLflow's "models from code").

MLflow runs this file when the model is loaded with ``mlflow.pyfunc.load_model``; the weights
and config come from the ``checkpoint`` artifact (``model.safetensors`` + ``config.json``),
so loading unpickles nothing. :func:`iicnet.registry.load_model` does not use this file at
all: it reads the same artifact straight into an :class:`~iicnet.model.IICNet`.

``predict`` takes, as ``mlflow models serve`` hands them over:

- records (``{"dataframe_records": [{"images": [K base64 image files]}]}`` or
  ``[{"embedding": base64 PNG}]``): answered by :func:`iicnet.convert.serving.handle` with
  ``{"embedding": base64 PNG}`` (any size, tiled, provenance in the PNG) or
  ``{"images": [K base64 PNGs], "names": [...]}``;
- uint8 arrays (``{"inputs": ...}``): ``(B, K, C, H, W)`` images -> ``(B, C_e, H/s, W/s)``
  embeddings, and 4-D embeddings -> ``(B, K, C, H, W)`` images; ``params={"mode":
  "encode"|"decode"}`` says which explicitly (default ``"auto"``: by the array's rank).

The model's signature declares that one parameter, so MLflow hands it through both
``mlflow.pyfunc.load_model(...).predict(x, params=...)`` and HTTP (``{"inputs": ...,
"params": {"mode": ...}}``); it declares no input schema, which would force one of the two
input forms on the other. The logged input example is a records request of K small images.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from iicnet.convert import Converter, ModelSource, serving
from iicnet.formats.checkpoint import load


class IICNetPyfunc(PythonModel):
    # predict has no type hints and MLflow does not wrap it: it tells apart records and
    # uint8 arrays of either rank itself, which a schema derived from hints would convert.
    # (MLflow's own switch for that; without it, each definition of this class, at logging
    # and at every load, warns that type hints are missing.)
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.model, self.config = load(context.artifacts["checkpoint"])
        self.converter = Converter(self.model, self.config,
                                   ModelSource("mlflow pyfunc", "served model"))

    def predict(self, context, model_input, params=None):
        if hasattr(model_input, "to_dict") or isinstance(model_input, list):
            return serving.handle(self.converter, model_input)
        x = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8))
        mode = (params or {}).get("mode") or "auto"
        if mode == "auto":
            mode = {5: "encode", 4: "decode"}.get(x.ndim, "auto")
        if mode not in ("encode", "decode"):
            raise ValueError(f"expected (B, K, C, H, W) images or (B, C_e, h, w) "
                             "embeddings, and params.mode 'auto', 'encode' or 'decode'; got "
                             f"shape {tuple(x.shape)} and mode {mode!r}")
        out = self.model.encode(x) if mode == "encode" else self.model.decode(x)
        return out.numpy()


mlflow.models.set_model(IICNetPyfunc())
