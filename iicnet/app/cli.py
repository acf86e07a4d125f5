"""The ``iicnet`` command line: embed your images into one PNG, restore them, score a model.

  iicnet embed   --model MODEL INPUTS... -o out.png
  iicnet restore --model MODEL emb.png -o DIR [--video out.mp4]
  iicnet eval    --model MODEL --data SHARDS [--jpeg Q ...] [--json]
  iicnet info    MODEL | zoo:
  iicnet promote models:/NAME@candidate --to champion [--force]
  iicnet import-official CHECKPOINT.pth [--config C.yaml] [--set K=V ...] -o DIR
                 [--register NAME [--alias ALIAS]]

MODEL is zoo:<name> (a model shipped with iicnet; `iicnet info zoo:` lists them),
models:/<name>@<alias>, models:/<name>/<version> or a logged model models:/m-<id> (the MLflow
registry at MLFLOW_TRACKING_URI, else the .iicnet/mlflow.db that make run wrote), or a local
checkpoint directory (info also takes a config YAML). Exit codes: 0 success, 2 bad
input (the message says which file and why; nothing is written), 3 promote left the alias
where it was, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iicnet import zoo
from iicnet.formats import config_file
from iicnet.formats.checkpoint import CheckpointError
from iicnet.formats.embedding_png import EmbeddingFileError
from iicnet.formats.imagefiles import InputError
from iicnet.model import IICNet
from iicnet.model.config import MAX_CROP, ConfigError
from iicnet.storage import StorageError

DEVICES = ("auto", "cpu", "cuda")
MAX_FPS = 1000.0


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


def _warn(message: str) -> None:
    print(f"iicnet: warning: {message}", file=sys.stderr)


def _converter(args: argparse.Namespace):
    from iicnet.app.api import load

    return load(args.model, device=args.device, tile=args.tile, progress=True,
                engine=args.engine, halo=args.halo)


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two local paths name one file (through links, ``..`` or case folding)."""
    a, b = Path(a), Path(b)
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_output(option: str, target: str | Path, inputs: list[str | Path],
                  overwrite: bool) -> None:
    """Refuse an output that is one of the inputs (always), or that exists (unless
    ``overwrite``), before any work is done."""
    from iicnet import storage

    if storage.is_s3(target):
        if not overwrite and storage.exists(target):
            raise UserError(f"{option} {target}: exists; pass --overwrite to replace it")
        return
    clash = next((p for p in inputs if not storage.is_s3(p) and _same_file(p, target)), None)
    if clash is not None:
        raise UserError(f"{option} {target}: is the input {clash}; writing there would "
                        "destroy it: give another name")
    if Path(target).is_dir():
        raise UserError(f"{option} {target}: a folder; give a file name")
    if Path(target).exists() and not overwrite:
        raise UserError(f"{option} {target}: exists; pass --overwrite to replace it")


@contextmanager
def _writing(option: str, target: str | Path) -> Iterator[None]:
    """Turn an operating-system failure to write ``target`` (unwritable, read-only, full, a
    file where a folder is needed) into a message; the atomic writers leave nothing behind."""
    try:
        yield
    except OSError as exc:
        name = str(exc.filename or "")
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and Path(name).is_file():
            why = f"{name} is a file, not a folder"
        else:
            why = (exc.strerror or str(exc)) + (f" ({name})" if name and name != str(target)
                                                else "")
        raise UserError(f"{option} {target}: cannot write it: {why}; nothing was "
                        "written") from exc


def _progress(items, desc: str, unit: str, total: int | None = None):
    from iicnet.convert import progress_bar

    return progress_bar(items, desc, total is not None or len(items) > 1, unit, total)


# -- embed -----------------------------------------------------------------------------

def cmd_embed(args: argparse.Namespace) -> int:
    from iicnet.formats import embedding_png, imagefiles

    out = str(args.output)
    if not out.lower().endswith(".png"):
        raise UserError(f"-o {out}: the embedding must be a .png file (lossy formats such as "
                        "JPEG destroy what is hidden in it)")
    paths = imagefiles.expand(args.inputs)
    _check_output("-o", out, paths, args.overwrite)
    conv = _converter(args)
    fps = None
    if len(paths) == 1 and imagefiles.is_video(paths[0]):
        step = args.step or conv.config.data.step
        images, fps = imagefiles.read_video_window(paths[0], conv.num_images, step)
        labels = [f"{paths[0]} frame {j}" for j in range(len(images))]
    else:
        video = [p for p in paths if imagefiles.is_video(p)]
        if video:
            raise UserError(f"{video[0]}: a video among {len(paths)} inputs; give one video "
                            "file alone, or image files")
        conv.check_count([str(p) for p in paths])
        images = [imagefiles.read_image(p) for p in _progress(paths, "reading", "file")]
        labels = [str(p) for p in paths]
    pixels, info = conv.embed_pixels(images, labels=labels, fps=fps)
    with _writing("-o", out):
        embedding_png.write(out, pixels, info)
    height, width = info.size
    print(f"{out}: {conv.num_images} images of {width}x{height} ({', '.join(conv.names)}) "
          f"in one {pixels.shape[1]}x{pixels.shape[0]} PNG, by {conv.describe()}")
    return 0


# -- restore ---------------------------------------------------------------------------

def cmd_restore(args: argparse.Namespace) -> int:
    from iicnet.formats import imagefiles

    if args.output is None and args.video is None:
        raise UserError("say where to put the images: -o DIR and/or --video out.mp4")
    if args.video is not None and args.video.suffix.lower() != ".mp4":
        raise UserError(f"--video {args.video}: write an .mp4 file")
    if args.fps is not None and not (math.isfinite(args.fps) and 0 < args.fps <= MAX_FPS):
        raise UserError(f"--fps {args.fps}: a frame rate is a number in (0, {MAX_FPS}]")
    if args.video is not None:
        _check_output("--video", args.video, [args.embedding], args.overwrite)
    conv = _converter(args)
    pixels, info = _read_embedding(conv, args)
    if args.allow_lossy and conv.jpeg_quality is None:
        _warn(f"{args.embedding}: restoring a lossy or altered embedding; expect a large "
              "drop in quality")
    width = len(str(conv.num_images - 1))
    names = [f"{j:0{max(2, width)}d}-{name}.png" for j, name in enumerate(conv.names)]
    if args.output is not None:
        _check_folder(args.output, names, args.embedding, args.overwrite)
    images = conv.restore_pixels(pixels, info)
    files = dict(zip(names, images))
    if args.output is not None:
        with _writing("-o", args.output):
            imagefiles.write_images(args.output, files,
                                    lambda names: _progress(names, "writing", "file"))
        print(f"{args.output}: {len(files)} images ({', '.join(files)})")
    if args.video is not None:
        from iicnet.storage.atomic import replacing

        fps = args.fps or info.fps or 5.0
        with _writing("--video", args.video), replacing(args.video) as tmp:
            imagefiles.write_video(tmp, images, fps)
        print(f"{args.video}: {len(images)} frames at {fps:g} fps")
    return 0


def _check_folder(directory: Path, names: list[str], embedding: str, overwrite: bool) -> None:
    """A restore adds its K files to ``directory``: say which existing files it would
    replace (refused without ``--overwrite``), and never replace the embedding itself."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"-o {directory}: a file; give a folder for the restored images")
    if not directory.is_dir():
        return
    present = [name for name in names if (directory / name).exists()]
    clash = next((n for n in present if _same_file(directory / n, embedding)), None)
    if clash is not None:
        raise UserError(f"-o {directory}: restoring would replace {clash}, the embedding "
                        "being restored: give another folder")
    if present and not overwrite:
        raise UserError(f"-o {directory}: restoring would replace {len(present)} file(s) "
                        f"there ({', '.join(present)}); pass --overwrite to replace them, or "
                        "give another folder")


def _read_embedding(conv, args: argparse.Namespace):
    """The embedding's pixels and metadata; a plain PNG (no iicnet metadata) is restored
    after one line saying it could not be checked against the model."""
    import warnings

    from iicnet.convert import UncheckedEmbedding
    from iicnet.convert.converter import RobustRestore

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UncheckedEmbedding)
        warnings.simplefilter("always", RobustRestore)
        found = conv.read_embedding(args.embedding, allow_lossy=args.allow_lossy)
    for warning in caught:
        if issubclass(warning.category, (UncheckedEmbedding, RobustRestore)):
            _warn(str(warning.message))
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return found


# -- import-official -------------------------------------------------------------------

def cmd_import_official(args: argparse.Namespace) -> int:
    from iicnet.formats import checkpoint, official
    from iicnet.storage.atomic import publishing

    source, out = Path(args.checkpoint), Path(args.output)
    if args.alias and not args.register:
        raise UserError("--alias names a version of the model that --register NAME creates; "
                        "give --register too")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: a file; give a folder for the checkpoint")
    if source.resolve().is_relative_to(out.resolve()):
        raise UserError(f"-o {out}: holds {source}, which writing the checkpoint would "
                        "replace; give another folder")
    config = config_file.load(args.config) if args.config else None
    try:
        imported = official.import_checkpoint(source, config, args.set or [])
    except official.OfficialFormatError as exc:
        raise UserError(str(exc)) from exc
    cfg, m = imported.config, imported.config.model
    label = f"configs/{imported.published}.yaml" if imported.published else "no published config"
    down = "none" if m.downscale == "none" else f"{m.downscale}, order {m.order}"
    print(f"{source}: official IICNet checkpoint (sha256 {imported.sha256})")
    print(f"  model: task {cfg.data.task}, K={m.num_images}, {m.blocks} coupling blocks, "
          f"downscaling {down}, {m.embed_channels} embedding channel(s), nf {m.nf}, "
          f"growth {m.growth} ({label})")
    print(f"  {imported.fit}")
    print("  colour: " + ("weights permuted so the model takes and gives RGB"
                          if imported.colour == "permuted" else
                          "official BGR weights kept, model.channel_order bgr"))
    for note in imported.notes:
        print(f"  note: {note}")
    tags = {"source": f"imported from the official checkpoint {imported.sha256}",
            "official_file": source.name, "official_sha256": imported.sha256,
            "published_config": imported.published or "", "colour": imported.colour}
    with publishing(out) as tmp:
        checkpoint.save(tmp, imported.model, cfg)
        if args.register:
            registered = _register_import(tmp, cfg, args, tags, source)
    print(f"{out}: checkpoint written (model.safetensors + config.json); use --model {out}")
    if args.register:
        print(f"registered models:/{args.register}@{registered[2]} (version {registered[1]}, "
              f"MLflow run {registered[0]})")
    return 0


def _register_import(directory: Path, cfg, args: argparse.Namespace, tags: dict[str, str],
                     source: Path) -> tuple[str, str, str]:
    from iicnet import registry

    alias = args.alias or registry.DEFAULT_ALIAS
    run_name = f"official-{source.stem}-{tags['official_sha256'][:12]}"
    try:
        uri = registry.tracking_uri()
        run_id, version = registry.register_import(uri, directory, cfg, args.register,
                                                   alias=alias, run_name=run_name, tags=tags)
    except registry.TrackingError as exc:
        raise UserError(str(exc)) from exc
    return run_id, version, alias


# -- eval ------------------------------------------------------------------------------

def cmd_eval(args: argparse.Namespace) -> int:
    import itertools

    from iicnet.app.evaluation import evaluate
    from iicnet.formats.shards import read_manifest
    from iicnet.tasks import evaluation_items

    bad = [q for q in args.jpeg or () if not 1 <= q <= 100]
    if bad:
        raise UserError(f"--jpeg {bad[0]}: a JPEG quality is 1..100")
    conv = _converter(args)
    try:
        splits = read_manifest(args.data)["splits"]
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    split = args.split or next((s for s in ("test", "val", "valid") if s in splits),
                               next(iter(splits)))
    overrides = [f"data.crop={args.crop or MAX_CROP}"]
    if args.step:
        overrides.append(f"data.step={args.step}")
    cfg = conv.config.override(overrides)
    items = itertools.islice(evaluation_items(args.data, cfg, split), args.limit)
    result = evaluate(conv, _progress(items, "evaluating", "item", args.limit or 0),
                      tile=args.tile, jpeg=args.jpeg or ())
    if result.items == 0:
        raise UserError(f"{args.data}: split {split!r} gave no {conv.task} items")
    label = f"{conv.task} K={conv.num_images}"
    if conv.task == "video":
        label += f", step {cfg.data.step}" + (", x2 lower resolution" if conv.scale == 2 else "")
    result.setup = {"label": label, "model": args.model, "model_name": conv.source.name,
                    "model_version": conv.source.version, "weights": conv.fingerprint,
                    "data": args.data, "split": split,
                    "crop": args.crop or "full frames", "tile": args.tile}
    if args.json:
        print(result.to_json())
    else:
        print(f"{conv.describe()} on {args.data} (split {split}, "
              f"{'centre crops of ' + str(args.crop) if args.crop else 'full frames'}):")
        print(result.table())
    return 0


# -- info ------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    if args.model.strip() == zoo.SCHEME:
        return zoo_listing(args.json)
    path = Path(args.model)
    info: dict = {"source": args.model}
    if path.is_file():
        cfg = config_file.load(path)
        model = IICNet(cfg)
    else:
        from iicnet.app.api import load_model
        from iicnet.convert import weights_fingerprint

        model, cfg, source = load_model(args.model)
        info.update(model_name=source.name, model_version=source.version,
                    weights=weights_fingerprint(model))
    from iicnet.tasks import get_task, natural_order

    task = get_task(cfg)
    m = cfg.model
    names = natural_order(task, m.num_images)[1]
    info.update({
        "task": cfg.data.task,
        "num_images": m.num_images,
        "images": names,
        "reference": task.output_names[0],
        "embed_channels": m.embed_channels,
        "scale": model.scale,
        "input_multiple": model.multiple,
        "downscale": m.downscale,
        "blocks": m.blocks,
        "step": cfg.data.step if cfg.data.task == "video" else None,
        "parameters": parameter_counts(model),
    })
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    shape = f"at 1/{model.scale} resolution" if model.scale > 1 else "at full resolution"
    print(f"{args.model}: task {info['task']}, K={m.num_images} "
          f"({', '.join(names)}; reference {task.output_names[0]}), "
          f"embedding {m.embed_channels} channel(s) {shape}, {m.blocks} coupling blocks")
    if "weights" in info:
        version = f" version {info['model_version']}" if info["model_version"] else ""
        print(f"  from {info['model_name']}{version}, weights {info['weights']}")
    for name, count in info["parameters"].items():
        print(f"  {name:<18} {count:>12,}")
    if args.model.startswith(zoo.SCHEME):
        print(zoo_summary(zoo.card(args.model)))
    return 0


def zoo_summary(card: dict) -> str:
    """A zoo model card in a few lines: held-out scores, speed, and what made it."""
    s, t = card.get("scores", {}), card.get("training", {})
    lines = [f"  {card.get('summary', '')}".rstrip()]
    if s:
        frames = ", ".join(f"{v:.2f}" for v in s.get("restored_psnr_per_frame", []))
        lines.append(f"  held-out ({s.get('measured_on', '?')}): embedding "
                     f"{s.get('embedding_psnr', float('nan')):.2f} dB, restored "
                     f"{s.get('restored_psnr', float('nan')):.2f} dB (per frame {frames}), "
                     f"worst margin over the copy baseline "
                     f"{s.get('worst_margin_db', float('nan')):+.2f} dB")
    if "cpu_s_per_megapixel" in card:
        lines.append(f"  embed + restore on a CPU: {card['cpu_s_per_megapixel']:.2f} s per "
                     f"megapixel ({card.get('cpu', 'this machine')})")
    if t:
        lines.append(f"  trained {t.get('steps', '?')} steps ({t.get('hours', 0):.1f} h, "
                     f"{t.get('precision', '?')}) on {t.get('data', '?')}")
    return "\n".join(lines)


def zoo_listing(as_json: bool) -> int:
    """``iicnet info zoo:``: every shipped model with its card."""
    cards = {name: zoo.card(name) for name in zoo.names()}
    if as_json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print("no zoo models are installed")
    for name, card in cards.items():
        print(f"{zoo.SCHEME}{name}")
        print(zoo_summary(card))
    return 0


# -- promote ---------------------------------------------------------------------------

def cmd_promote(args: argparse.Namespace) -> int:
    from iicnet import registry

    try:
        claim = registry.promote(registry.tracking_uri(), args.model, args.to,
                                 force=args.force)
    except registry.TrackingError as exc:
        raise UserError(str(exc)) from exc
    print(f"{claim.name}: {claim.describe('restored PSNR', force='--force')}")
    return 0 if claim.moved else 3


# -- the parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from iicnet.convert import DEFAULT_HALO, DEFAULT_TILE, ENGINES

    parser = argparse.ArgumentParser(prog="iicnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser, tile: int) -> None:
        p.add_argument("--model", required=True,
                       help="models:/<name>@<alias>, models:/<name>/<version>, runs:/..., or "
                            "a checkpoint directory")
        p.add_argument("--device", choices=DEVICES, default="auto",
                       help="where the model runs (default: cuda when available)")
        p.add_argument("--tile", type=int, default=tile,
                       help=f"largest tile side in pixels, bounding memory (default {tile}; "
                            "0: whole images)")
        p.add_argument("--halo", type=int, default=DEFAULT_HALO,
                       help="pixels of context computed around each tile so tiles join "
                            f"without seams (default {DEFAULT_HALO}; restore uses the "
                            "embedding's)")
        p.add_argument("--engine", choices=ENGINES, default="auto",
                       help="what runs the network: torch, or openvino on the CPU (pip "
                            "install 'iicnet[fast]'); default auto: openvino on the CPU "
                            "when installed")

    embed = sub.add_parser("embed", help="K images (files, a folder, a glob, a video) -> one "
                                         "PNG")
    model_options(embed, DEFAULT_TILE)
    embed.add_argument("inputs", nargs="+",
                       help="K image files in natural order (time order for a clip), folders, "
                            "glob patterns, or one video file")
    embed.add_argument("-o", "--output", required=True, help="the embedding PNG to write")
    embed.add_argument("--overwrite", action="store_true",
                       help="replace the output file if it exists (never an input)")
    embed.add_argument("--step", type=int, help="frames between the K picked from a video "
                                                "(default: the model's data.step)")
    embed.set_defaults(func=cmd_embed)

    restore = sub.add_parser("restore", help="an embedding PNG -> the K images (or a video)")
    model_options(restore, DEFAULT_TILE)
    restore.add_argument("embedding", help="the PNG written by iicnet embed")
    restore.add_argument("-o", "--output", type=Path, help="folder for the K restored PNGs")
    restore.add_argument("--video", type=Path, help="also write the images as an .mp4")
    restore.add_argument("--fps", type=float, help="frame rate of --video (default: the "
                                                   "source video's, else 5)")
    restore.add_argument("--overwrite", action="store_true",
                         help="replace same-named files in -o DIR and an existing --video "
                              "(never the embedding itself)")
    restore.add_argument("--allow-lossy", action="store_true",
                         help="restore a JPEG or altered embedding anyway (quality drops)")
    restore.set_defaults(func=cmd_restore)

    evaluate = sub.add_parser("eval", help="the paper's PSNR/SSIM on a shard set")
    model_options(evaluate, 0)
    evaluate.add_argument("--data", required=True, help="shard directory or s3:// prefix")
    evaluate.add_argument("--split", help="default: test, else val")
    evaluate.add_argument("--step", type=int, help="video frame step (default: the model's)")
    evaluate.add_argument("--crop", type=int, help="centre crops of this side (default: full "
                                                   "frames, as the tables were measured)")
    evaluate.add_argument("--limit", type=int, help="score only the first N items")
    evaluate.add_argument("--jpeg", type=int, action="append", metavar="Q",
                          help="also score restoring from a real JPEG of the embedding at "
                               "quality Q (repeatable)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=cmd_eval)

    info = sub.add_parser("info", help="what a model embeds, and where it came from")
    info.add_argument("model", help="a model URI, a checkpoint directory or a config YAML")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    promote = sub.add_parser("promote", help="move an alias (e.g. @champion) to a registered "
                                             "version if it validates better")
    promote.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version>")
    promote.add_argument("--to", required=True, metavar="ALIAS",
                         help="the alias to move, e.g. champion")
    promote.add_argument("--force", action="store_true",
                         help="move it even if the version does not score higher than the "
                              "alias's holder")
    promote.set_defaults(func=cmd_promote)

    imp = sub.add_parser("import-official",
                         help="the authors' released checkpoint (.pth) -> our checkpoint",
                         description="Read a checkpoint saved by the official IICNet code "
                                     "(weights only; nothing in it runs), check every key "
                                     "and shape, and write it as our checkpoint.")
    imp.add_argument("checkpoint", help="the official .pth file (state dict, legacy or zip, "
                                        "with or without module. prefixes)")
    imp.add_argument("--config", type=Path, help="hold it to this config (default: inferred "
                                                 "from the tensors)")
    imp.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config field (repeatable), e.g. data.task=hiding")
    imp.add_argument("-o", "--output", required=True, help="the checkpoint folder to write")
    imp.add_argument("--register", metavar="NAME",
                     help="also log it to MLflow (MLFLOW_TRACKING_URI) and register it as NAME")
    imp.add_argument("--alias", help="alias of the registered version (default "
                                     "candidate)")
    imp.set_defaults(func=cmd_import_official)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from iicnet.app.api import ModelError

    try:
        return args.func(args)
    except (UserError, InputError, EmbeddingFileError, ModelError, ConfigError,
            CheckpointError, StorageError, zoo.ZooError) as exc:
        print(f"iicnet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
