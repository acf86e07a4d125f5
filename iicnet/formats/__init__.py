"""The files IICNet reads and writes: checkpoints (safetensors + JSON config), config files,
embedding PNGs with their provenance, the user's images and videos, and WebDataset shards.
Import the module you need (``from iicnet.formats import checkpoint``); this package imports
none of them, so reading an image never loads torch."""
