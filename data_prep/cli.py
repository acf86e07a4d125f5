"""Command line: ``python -m data_prep LAYOUT|samples|photos ...`` (layouts: davis, flickr1024,
div2k, matting, folder)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from data_prep import davis, div2k, flickr1024, folder, matting, photos, samples
from data_prep.shards import OutputError, PrepError, write_dataset
from iicnet.storage import StorageError

LAYOUTS: dict[str, ModuleType] = {
    module.NAME: module for module in (davis, flickr1024, div2k, matting, folder)
}


_COMMON = ("command", "root", "out", "workers", "strict", "shard_size")
"""Arguments of every layout that are not options of the dataset (kept out of the manifest)."""


def build_parser(
    prog: str = "python -m data_prep",
    layout_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The command line; ``layout_arguments`` adds a front end's own options (e.g. Ray's
    ``--address``) to every layout's subcommand."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pack a source dataset into WebDataset shards (a directory or s3://...).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in LAYOUTS.items():
        sub = commands.add_parser(name, help=(module.__doc__ or "").splitlines()[0],
                                  description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--root", type=Path, required=True, help="the source dataset folder")
        sub.add_argument("--out", required=True, help="a directory or s3://bucket/prefix")
        sub.add_argument("--shard-size", type=int, default=64,
                         help="items (clips, pairs, images) per shard (default 64)")
        sub.add_argument("--strict", action="store_true",
                         help="fail on the first bad source file instead of skipping it")
        sub.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                         help="threads reading and checking source files")
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        if layout_arguments is not None:
            layout_arguments(sub)
    sub = commands.add_parser("samples", help="build the small sample datasets",
                              description=samples.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--out", type=Path, required=True, help="folder to create them in")
    sub = commands.add_parser("photos", help=photos.__doc__.splitlines()[0],
                              description=photos.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--out", type=Path, required=True, help="folder to create DAVIS clips in")
    sub.add_argument("--photos", type=Path, default=photos.ROOT,
                     help=f"where the packages installed the photographs (default {photos.ROOT})")
    return parser


def layout_options(args: argparse.Namespace, ignore: Iterable[str] = ()) -> dict:
    """The layout's own options, as recorded in the manifest."""
    skip = {*_COMMON, *ignore}
    return {k: v for k, v in vars(args).items() if k not in skip}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "samples":
            built = samples.build(args.out)
            for name, path in built.items():
                print(f"{name}: {path}")
            return 0
        if args.command == "photos":
            built = photos.build(args.out, args.photos)
            print(f"davis: {built}")
            return 0
        module = LAYOUTS[args.command]
        if not args.root.is_dir():
            raise PrepError(f"--root {args.root}: not a directory")
        splits = module.plan(args.root, args)
        write_dataset(module.NAME, splits, module.pack, args.out,
                      shard_size=args.shard_size, strict=args.strict, workers=args.workers,
                      options=layout_options(args))
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PrepError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

