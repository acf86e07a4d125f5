"""The MLflow pyfunc of an IICNet, logged as code (MLflow's "models from code").

MLflow runs this file when the model is loaded with ``mlflow.pyfunc.load_model``; the weights
and config come from the ``checkpoint`` artifact (``model.safetensors`` + ``config.json``),
so loading unpickles nothing. :func:`iicnet.registry.load_model` does not use this file at
all: it reads the same artifact straight into an :class:`~iicnet.model.IICNet`.

``predict`` takes records, as ``mlflow models serve`` hands them over
(``{"dataframe_records": [{"images": [K base64 image files]}]}`` or
``[{"embedding": base64 PNG}]``), and answers each through
:func:`iicnet.convert.serving.handle`: ``{"embedding": base64 PNG}`` (any size, tiled,
provenance in the PNG) or ``{"images": [K base64 PNGs], "names": [...]}``.

The model's signature (:func:`iicnet.registry.models.log_model`) declares that form: inputs
``images`` (a list of strings) and ``embedding`` (a string), outputs ``embedding``,
``images`` and ``names``, each optional, so the version page shows them and MLflow refuses
anything else before it reaches the model. Raw uint8 arrays are for Python
(``iicnet.load(...).embed``), where the whole converter is at hand. The logged input example
is a records request of K small images.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel, PythonModelContext

from iicnet.convert import Converter, ModelSource, serving
from iicnet.formats.checkpoint import load


class IICNetPyfunc(PythonModel):
    # predict has no type hints: the logged signature, not hints, says what it takes.
    # (MLflow's own switch for that; without it, each definition of this class, at logging
    # and at every load, warns that type hints are missing.)
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.model, self.config = load(context.artifacts["checkpoint"])
        self.converter = Converter(self.model, self.config,
                                   ModelSource("mlflow pyfunc", "served model"))

    def predict(self, context, model_input, params=None):
        return serving.handle(self.converter, model_input)


mlflow.models.set_model(IICNetPyfunc())
