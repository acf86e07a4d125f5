"""Building blocks of IICNet. Each invertible piece has ``forward(x)`` and ``inverse(y)``."""

from iicnet.modules.coupling import CouplingBlock, CouplingStack
from iicnet.modules.dense_block import DenseBlock, GroupedDenseBlocks
from iicnet.modules.downscale import InvertibleDownscale
from iicnet.modules.quantize import quantize
from iicnet.modules.relation import RelationModule
from iicnet.modules.squeeze import ChannelSqueeze

__all__ = [
    "ChannelSqueeze",
    "CouplingBlock",
    "CouplingStack",
    "DenseBlock",
    "GroupedDenseBlocks",
    "InvertibleDownscale",
    "RelationModule",
    "quantize",
]
