"""Building blocks of IICNet. Each invertible piece has ``forward(x)`` and ``inverse(y)``."""

from iicnet.model.modules.coupling import CouplingBlock, CouplingStack
from iicnet.model.modules.dense_block import DenseBlock, GroupedDenseBlocks
from iicnet.model.modules.downscale import InvertibleDownscale
from iicnet.model.modules.jpeg import JpegDistortion, differentiable_jpeg
from iicnet.model.modules.quantize import quantize
from iicnet.model.modules.relation import RelationModule
from iicnet.model.modules.squeeze import ChannelSqueeze

__all__ = [
    "ChannelSqueeze",
    "CouplingBlock",
    "CouplingStack",
    "DenseBlock",
    "GroupedDenseBlocks",
    "InvertibleDownscale",
    "JpegDistortion",
    "RelationModule",
    "differentiable_jpeg",
    "quantize",
]
