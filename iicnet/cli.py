"""The ``iicnet`` command line. Exit codes: 0 success, 2 bad input (the message says which)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iicnet import config as config_mod
from iicnet.checkpoint import CheckpointError, load_config
from iicnet.model import IICNet


class UserError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def parameter_counts(model: IICNet) -> dict[str, int]:
    """Parameters per top-level module, plus the total."""
    counts = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in model.named_children()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def _load_any_config(path: str) -> config_mod.Config:
    p = Path(path)
    if p.is_dir():
        return load_config(p)
    if not p.exists():
        raise UserError(f"{path}: no such config file or checkpoint directory")
    return config_mod.load(p)


def cmd_info(args: argparse.Namespace) -> int:
    cfg = _load_any_config(args.model)
    model = IICNet(cfg)
    m = cfg.model
    info = {
        "source": args.model,
        "task": cfg.data.task,
        "num_images": m.num_images,
        "embed_channels": m.embed_channels,
        "scale": model.scale,
        "downscale": m.downscale,
        "blocks": m.blocks,
        "parameters": parameter_counts(model),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}: task {info['task']}, K={m.num_images}, "
          f"embedding {m.embed_channels} channel(s) at 1/{model.scale} resolution, "
          f"{m.blocks} coupling blocks")
    for name, count in info["parameters"].items():
        print(f"  {name:<18} {count:>12,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iicnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what a config or checkpoint builds: sizes and parameters")
    info.add_argument("model", help="a config YAML or a checkpoint directory")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, config_mod.ConfigError, CheckpointError) as exc:
        print(f"iicnet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
