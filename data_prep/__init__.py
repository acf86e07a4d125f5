"""Data preparation: source datasets in their official layouts -> WebDataset shards.

``python -m data_prep <layout> --root SRC --out DEST [--shard-size N] [--strict]`` where
layout is ``davis``, ``flickr1024``, ``div2k``, ``matting`` or ``folder`` (one module each,
its docstring describes the layout and the splits), and DEST is a directory or
``s3://bucket/prefix`` (credentials and endpoint from the standard AWS environment variables).
``python -m data_prep samples --out DIR`` builds small sample datasets in those layouts from
photographs that ship with scikit-image (see :mod:`data_prep.samples`).

What DEST holds
---------------
- ``<split>-NNNNNN.tar``: WebDataset shards, uncompressed tar, ``shard_size`` items each.
- ``manifest.json`` (written last)::

    {"format": "iicnet-shards", "version": 1, "source": "davis", "shard_size": 64,
     "options": {...},
     "splits": {"train": {"samples": 62, "bytes": ..., "shards": [
         {"name": "train-000000.tar", "samples": 64, "bytes": ..., "sha256": "..."}, ...]}},
     "skipped": [{"path": ".../00042.jpg", "reason": "frame does not decode (...)"}]}

- ``.progress/<shard>.json``: one record per finished shard, what a re-run resumes from.

What a sample holds
-------------------
Each source image's original bytes exactly once (never re-encoded), under an entry named by
its role and original extension, plus ``meta.json``; tar members are ``<key>.<entry>``:

============  ==============================================  ==================================
layout        entries                                         meta.json
============  ==============================================  ==================================
davis         ``00000.jpg``, ``00001.jpg``, ... (a whole      subset, video, part, height, width,
              clip, renumbered from 0 in time order)           frames (original file names)
flickr1024    ``left.png``, ``right.png``                     folder, pair, height, width
div2k         ``image.png`` (HR), ``lr_x2.png``, ``lr_x4.png``,  id, height, width, lr_scales
              ``lr_x8.png`` when the source has them
matting       ``fg.png``, ``alpha.png``, ``bg.jpg``           fg, bg, height, width
folder        ``image.<ext>``                                 path, height, width
============  ==============================================  ==================================

Windows (K frames at a step, groups of K images for hiding, ...) are cut at load time by
:mod:`iicnet.tasks`, so one set of shards serves every K, step and task reading that layout.
"""
