"""The network and everything it is made of: torch and the standard library only.

``config`` (what a model is), ``modules/`` (the invertible pieces), ``network`` (IICNet),
``losses`` and ``metrics`` (the paper's training objective and its scores).
"""

from iicnet.model.network import IICNet, Output, to_uint8

__all__ = ["IICNet", "Output", "to_uint8"]
