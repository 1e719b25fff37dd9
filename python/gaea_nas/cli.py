"""The ``gaea`` command: ``search``, ``train``, ``lookup``, ``info``, ``plot`` and ``report``.

Exit status: 0 done; 1 a missing, corrupt or unwritable file (dataset, table, checkpoint, run
config, a full disk), a dataset changed under a resumed run, or a search that cannot go on
(non-finite loss), reported in one line naming the file; 2 bad arguments (with the usage, or
in one line when found only once the dataset is loaded, e.g. a cutout larger than its images);
128 + signal number when SIGINT/SIGTERM stopped a search or a training run after checkpointing it.
Set ``GAEA_DEBUG=1`` to get tracebacks instead of one-line errors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

EXIT_ERROR = 1
EXIT_USAGE = 2

# options a resumed search may change (the rest come from the run folder's config.json)
_RESUME_OK = {"device", "threads", "no_progress", "data", "table", "checkpoint_every_steps", "checkpoint_minutes",
              "keep_epoch_checkpoints", "resume", "command", "allow_data_change", "max_file_bytes", "max_image_pixels"}
_INT_LIMIT = 2 ** 63  # no integer option reaches it (torch and numpy take int64)


def _number(kind, minimum, what, limit=None):
    """An argparse type: ``kind(text)`` that must be >= ``minimum`` (and below ``limit``, a
    number or a function giving one)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        top = limit() if callable(limit) else limit
        if not v >= minimum or (top is not None and not v < top):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


def _thread_limit() -> int:
    from .runtime import max_threads
    return max_threads() + 1


_positive_int = _number(int, 1, "a positive integer below 2**63", _INT_LIMIT)
_nonneg_int = _number(int, 0, "an integer >= 0 and below 2**63", _INT_LIMIT)
_nonneg_float = _number(float, 0.0, "a number >= 0")
_seed = _number(int, 0, "an integer in [0, 2**63)", _INT_LIMIT)
_threads = _number(int, 1, f"an integer from 1 to {4 * (os.cpu_count() or 1)} "
                          f"(4 x this machine's {os.cpu_count() or 1} CPUs)", _thread_limit)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gaea`` (one sub-parser per command)."""
    from .report import add_report_parser
    from .search.config import METHODS, OBJECTIVES, PRESETS, SPACES

    p = argparse.ArgumentParser(prog="gaea", description="Geometry-aware differentiable NAS (GAEA) on the gaea_ext fused ops.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("search", help="search a space on a dataset",
                       description="Search a space; the run folder gets config.json, metrics.jsonl, result.json "
                                   "and checkpoints. Unset options take the released defaults of the space and method.",
                       argument_default=None)
    s.add_argument("--space", choices=SPACES, help="search space (default nb201)")
    s.add_argument("--method", choices=METHODS, help="search method (default gaea)")
    s.add_argument("--preset", choices=PRESETS, help="'release' turns the released code's quirks back on")
    s.add_argument("--dataset", help="cifar10 | cifar100 | imagenet16-120 | PATH of an image folder or "
                                     ".tar/.tar.gz (train/<class>/*, test/<class>/*) or of a CIFAR/ImageNet16 "
                                     "folder or tarball (default cifar10)")
    s.add_argument("--data", metavar="PATH", help="folder of the named datasets (default "
                                                    "~/.cache/gaea_nas/downloads; CIFAR is downloaded there when online)")
    s.add_argument("--epochs", type=_positive_int)
    s.add_argument("--batch-size", type=_positive_int, help="per process under torchrun")
    s.add_argument("--objective", choices=OBJECTIVES, help="erm: both steps on the training set; bilevel: a 50/50 split")
    s.add_argument("--seed", type=_seed, help="0 <= SEED < 2**63 (default 0)")
    s.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<space>-<method>-<dataset>-seed<S>-<time>)")
    s.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    s.add_argument("--amp", choices=["bf16"], help="bfloat16 autocast (arch weights and EG state stay float32)")
    s.add_argument("--channels-last", action="store_true", default=None)
    s.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                   metavar="MODE", help="torch.compile the supernet (MODE default | reduce-overhead | max-autotune)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    s.add_argument("--allow-data-change", action="store_true", default=None,
                   help="with --resume: continue even though the dataset's content changed since the checkpoint")
    s.add_argument("--channels", type=_positive_int, help="supernet width C")
    s.add_argument("--cells", type=_positive_int, help="NB201: search cells per stage (N); DARTS: cells in the supernet")
    s.add_argument("--train-images", type=_positive_int, help="use a seeded subset of this many training images")
    s.add_argument("--cutout", type=_nonneg_int, help="cutout length, at most the image size (default 0: off)")
    s.add_argument("--table", metavar="PATH", help="NAS-Bench-201 table (default: $GAEA_NB201_TABLE or "
                                                     "../shared/data/nb201/nb201_accuracies.csv.gz)")
    s.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="any SearchConfig field, value as JSON (e.g. --set arch_lr=0.2 --set exclude_none=true)")
    s.add_argument("--checkpoint-every-steps", type=_nonneg_int, help="also checkpoint every N steps (default 0: off)")
    s.add_argument("--checkpoint-minutes", type=_nonneg_float, help="also checkpoint at least this often (default 10)")
    s.add_argument("--keep-epoch-checkpoints", action="store_true", default=None)
    s.add_argument("--threads", type=_threads, help="CPU threads (torch.set_num_threads), at most 4 x the CPUs")
    s.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    s.add_argument("--max-file-bytes", type=_positive_int, metavar="N",
                   help="the data loaders' cap on one batch file or image file (defaults: from the CIFAR / "
                        "ImageNet16 format, 16 MiB per image)")
    s.add_argument("--max-image-pixels", type=_positive_int, metavar="N",
                   help="the cap on one image's pixel count (default 4096 x 4096)")

    lk = sub.add_parser("lookup", help="NAS-Bench-201 accuracies of a cell",
                        description="Print the NAS-Bench-201 accuracies of ARCH, e.g. "
                                    "'|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'.")
    lk.add_argument("arch", metavar="ARCH")
    lk.add_argument("--table", metavar="PATH")
    lk.add_argument("--json", action="store_true", help="print JSON")

    inf = sub.add_parser("info", help="build, backends, devices and data locations")
    inf.add_argument("--json", action="store_true", help="print JSON")

    pl = sub.add_parser("plot", help="PNG figures of a run folder")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN_DIR/plots)")
    add_report_parser(sub)
    p.search_parser = s  # for usage messages of semantic errors
    p.train_parser = add_train_parser(sub)
    return p


def _one_line(e: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"gaea: error: {message}", file=sys.stderr)
    return code


def _refuse_used_run_dir(run_dir: Path) -> None:
    """A ValueError when ``--out`` already holds a run (a checkpoint or a result)."""
    if (run_dir / "last.pt").exists() or (run_dir / "result.json").exists():
        raise ValueError(f"--out: {run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                         "or choose another --out")


def _refuse_resume_settings(args, allowed, what: str) -> None:
    """A ValueError naming the flags (or ARCH) given with ``--resume`` that are not in ``allowed``."""
    given = sorted(k for k, v in vars(args).items() if v is not None and k not in allowed)
    if given:
        flags = ", ".join("ARCH" if k == "arch" else "--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--resume takes the {what} settings from RUN_DIR/config.json; drop {flags}")


def _resume_changes(args, options) -> Dict[str, Any]:
    """The run options ``--resume`` changes: ``options`` pairs an option name with the flag's
    value (None when not given); ``--no-progress`` turns the progress bar off."""
    changes = {k: v for k, v in options if v is not None}
    if args.no_progress:
        changes["progress"] = False
    return changes


def _command_settings(load, sub):
    """``load()``'s settings and exit code 0, or None and the exit code of its failure: a usage
    error (after the subcommand's usage) for a ValueError, 1 for a missing or unreadable file."""
    from .runtime import CheckpointError
    from .search.loop import RunFolderError

    try:
        return load(), 0
    except (FileNotFoundError, CheckpointError, RunFolderError, OSError) as e:
        return None, _fail(_one_line(e))
    except ValueError as e:
        sub.print_usage(sys.stderr)
        return None, _fail(_one_line(e), EXIT_USAGE)


def _run_command(start, command: str, run_dir: Path, interrupted, errors):
    """``start()``'s result and exit code 0, or None and the exit code of its failure: 128 + the
    signal for ``interrupted`` (with the ``--resume`` line), a usage error for an OptionError,
    1 for ``errors`` (re-raised under ``GAEA_DEBUG``)."""
    from .data import DatasetError
    from .runtime import CheckpointError
    from .search.loop import OptionError

    try:
        return start(), 0
    except interrupted as e:
        print(f"gaea: {e}\ngaea: resume with: gaea {command} --resume {run_dir}", file=sys.stderr)
        return None, 128 + int(e.signum)
    except OptionError as e:  # found only once the dataset is loaded: a usage error, in one line
        if os.environ.get("GAEA_DEBUG"):
            raise
        return None, _fail(_one_line(e), EXIT_USAGE)
    except (DatasetError, FileNotFoundError, CheckpointError, *errors, ValueError, OSError) as e:
        if os.environ.get("GAEA_DEBUG"):
            raise
        return None, _fail(_one_line(e))


# ---------------------------------------------------------------------------------------
# search


def _parse_overrides(items: Optional[List[str]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value  # a bare string, e.g. --set order=normalize_then_clamp
    return out


def _default_run_dir(cfg) -> Path:
    name = Path(cfg.dataset).name.split(".")[0] or "data"
    return Path("runs") / f"{cfg.space}-{cfg.method}-{name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _new_search(args, parser):
    from .search import RunOptions, default_config
    from .spaces import supernet_class

    from .runtime import check_seed

    if args.allow_data_change:
        raise ValueError("--allow-data-change applies only with --resume")
    space = args.space or "nb201"
    method = args.method or "gaea"
    overrides = _parse_overrides(args.overrides)
    dataset = args.dataset or "cifar10"
    if Path(dataset).expanduser().exists():  # a path: keep it absolute so --resume works from anywhere
        dataset = str(Path(dataset).expanduser().resolve())
    flags = {"dataset": dataset, "epochs": args.epochs, "batch_size": args.batch_size, "objective": args.objective,
             "seed": args.seed, "channels": args.channels}
    if args.cells is not None:
        flags[supernet_class(space).depth_field] = args.cells
    for k, v in flags.items():
        if v is not None:
            if k in overrides:
                raise ValueError(f"--set {k}=... repeats a flag given on its own; use one of them")
            overrides[k] = v
    cfg, notes = default_config(space, method, args.preset or "default", **overrides)
    check_seed(cfg.seed)
    opts = RunOptions(data_root=args.data, train_images=args.train_images, cutout=args.cutout or 0,
                      device=args.device or "auto", amp=args.amp, channels_last=bool(args.channels_last),
                      compile=args.compile, table=args.table,
                      checkpoint_every_steps=args.checkpoint_every_steps or 0,
                      checkpoint_minutes=10.0 if args.checkpoint_minutes is None else args.checkpoint_minutes,
                      keep_epoch_checkpoints=bool(args.keep_epoch_checkpoints), progress=not args.no_progress,
                      threads=args.threads, max_file_bytes=args.max_file_bytes, max_image_pixels=args.max_image_pixels)
    run_dir = Path(args.out) if args.out else _default_run_dir(cfg)
    _refuse_used_run_dir(run_dir)
    return cfg, opts, run_dir


def _resumed_search(args):
    import dataclasses

    from .search import load_run

    _refuse_resume_settings(args, _RESUME_OK, "search")
    run_dir = Path(args.resume)
    saved = load_run(run_dir)
    opts = saved["run"]
    changes = _resume_changes(args, (("device", args.device), ("threads", args.threads), ("data_root", args.data),
                                     ("table", args.table), ("checkpoint_every_steps", args.checkpoint_every_steps),
                                     ("checkpoint_minutes", args.checkpoint_minutes),
                                     ("max_file_bytes", args.max_file_bytes),
                                     ("max_image_pixels", args.max_image_pixels)))
    if args.keep_epoch_checkpoints:
        changes["keep_epoch_checkpoints"] = True
    return saved["config"], dataclasses.replace(opts, **changes), run_dir


def cmd_search(args, parser) -> int:
    """``gaea search``: run or resume a search; prints the cell found and its NB201 accuracies."""
    from .runtime import resolve_device
    from .search import SearchError, SearchInterrupted, run_search
    from .search.loop import RunFolderError, check_layout_supported

    def load():
        cfg, opts, run_dir = _resumed_search(args) if args.resume else _new_search(args, parser)
        check_layout_supported(cfg, opts, resolve_device(opts.device))
        return cfg, opts, run_dir

    settings, code = _command_settings(load, parser.search_parser)
    if code:
        return code
    cfg, opts, run_dir = settings
    result, code = _run_command(lambda: run_search(cfg, opts, run_dir, resume=bool(args.resume),
                                                   allow_data_change=bool(args.allow_data_change)),
                                "search", run_dir, SearchInterrupted, (RunFolderError, SearchError))
    if code:
        return code
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {run_dir}")
        print(f"cell: {result['arch']}")
        nb = result.get("nb201")
        if nb:
            print(f"NAS-Bench-201 CIFAR-10 test {nb['cifar10_test']:.2f}% (valid {nb['cifar10_valid']:.2f}%), "
                  f"CIFAR-100 test {nb['cifar100_test']:.2f}%, ImageNet16-120 test {nb['imagenet16_test']:.2f}%")
    return 0


# ---------------------------------------------------------------------------------------
# lookup, info, plot


def cmd_lookup(args) -> int:
    """``gaea lookup ARCH``: the NAS-Bench-201 table's accuracies of one cell."""
    from .spaces.nb201 import NB201Table, is_valid_arch, parse_arch

    try:
        parse_arch(args.arch)
    except (ValueError, TypeError) as e:
        print(f"gaea lookup: error: ARCH: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        table = NB201Table(args.table)
    except (FileNotFoundError, ValueError, OSError) as e:
        return _fail(str(e))
    row = table.summary(args.arch)
    if row is None:
        return _fail(f"{args.arch!r} is not in the NAS-Bench-201 table")
    if args.json:
        print(json.dumps({**row, "connected": is_valid_arch(args.arch)}, indent=2))
        return 0
    print(f"index {row['index']}: {row['arch']}")
    for name, key in (("CIFAR-10", "cifar10"), ("CIFAR-100", "cifar100"), ("ImageNet16-120", "imagenet16")):
        valid, test = row[f"{key}_valid"], row[f"{key}_test"]
        print(f"  {name:15s} valid {valid:6.2f}%   test {test:6.2f}%")
    best = table.find_best("cifar10", "ori-test")
    print(f"  (best CIFAR-10 test in the table: {best[1]:.2f}%, index {best[0]})")
    return 0


def _info() -> Dict[str, Any]:
    import platform

    import torch

    import gaea_ext

    from .data.cache import default_cache_dir
    from .spaces.nb201.table import ENV_VAR, default_table_path

    info: Dict[str, Any] = {
        "gaea_ext_backend": {"cpu": gaea_ext.backend("cpu"), "cuda": gaea_ext.backend("cuda")},
        "extension_built": gaea_ext.HAS_EXTENSION,
        "build": gaea_ext.build_info(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "nb201_table": os.environ.get(ENV_VAR) or (str(default_table_path()) if default_table_path() else None),
        "data_cache": str(default_cache_dir()),
    }
    return info


def cmd_info(args) -> int:
    """``gaea info``: what is built and usable here."""
    info = _info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv}")
        else:
            print(f"{k}: {v if v not in (None, []) else '-'}")
    return 0


def cmd_plot(args) -> int:
    """``gaea plot RUN_DIR``: PNG figures of a search (arch weights, entropy, NB201 accuracy, cell)
    or of a training run (loss, accuracy, learning rate and drop path)."""
    from .plots import RunDataError, plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, RunDataError) as e:
        return _fail(str(e))
    for p in paths:
        print(p)
    return 0


# ---------------------------------------------------------------------------------------
# train

# options a resumed training run may change (the rest come from the run folder's config.json)
_TRAIN_RESUME_OK = {"device", "threads", "no_progress", "data", "workers", "checkpoint_every_steps",
                    "checkpoint_minutes", "tensorboard", "resume", "command"}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """The ``gaea train`` sub-parser."""
    from .train.protocols import PROTOCOLS

    t = subparsers.add_parser(
        "train", help="train a cell from scratch under a published protocol",
        description="Train ARCH from scratch: a published genotype (DARTS_V1, DARTS_V2, PC_DARTS_cifar, "
                    "PC_DARTS_image, GAEA_PC_DARTS_image), a pasted 'Genotype(...)' literal, a NAS-Bench-201 "
                    "arch string or a search run folder. Unset options take the protocol's values; the run folder "
                    "gets config.json, metrics.jsonl, result.json and checkpoints (docs/training.md).",
        argument_default=None)
    t.add_argument("arch", nargs="?", metavar="ARCH")
    t.add_argument("--protocol", choices=list(PROTOCOLS), help="default darts (DARTS cells) or nb201 (NB201 cells)")
    t.add_argument("--dataset", help="cifar10 | cifar100 | imagenet16-120 | PATH (an image folder or tarball with "
                                     "train/ and test/, or for the imagenet protocols a folder with train/ and val/)")
    t.add_argument("--data", metavar="PATH", help="folder of the named datasets")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int, help="global batch (split over the ranks under torchrun)")
    t.add_argument("--channels", type=_positive_int, help="initial channels C")
    t.add_argument("--layers", type=_positive_int, help="DARTS networks: number of cells")
    t.add_argument("--cells", type=_positive_int, help="NAS-Bench-201 networks: cells per stage (N)")
    t.add_argument("--train-images", type=_positive_int, help="a seeded subset of this many training images")
    t.add_argument("--test-images", type=_positive_int, help="a seeded subset of this many test images")
    t.add_argument("--seed", type=_seed, help="0 <= SEED < 2**63 (default 0)")
    t.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/train-<arch>-<protocol>-seed<S>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    t.add_argument("--amp", choices=["bf16"], help="bfloat16 autocast")
    t.add_argument("--channels-last", action="store_true", default=None)
    t.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                   metavar="MODE", help="torch.compile the network")
    t.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across the ranks (CUDA)")
    t.add_argument("--set", dest="overrides", action="append", metavar="FIELD=VALUE",
                   help="any TrainConfig field, value as JSON (e.g. --set drop_path=0.3 --set cutout=0)")
    t.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard event files")
    t.add_argument("--workers", type=_nonneg_int, help="image-folder loader workers (default 4)")
    t.add_argument("--threads", type=_threads, help="CPU threads (torch.set_num_threads), at most 4 x the CPUs")
    t.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    t.add_argument("--checkpoint-every-steps", type=_nonneg_int, help="also checkpoint every N steps (default 0: off)")
    t.add_argument("--checkpoint-minutes", type=_nonneg_float, help="also checkpoint at least this often (default 10)")
    return t


def _new_training(args):
    from .train import TrainOptions, resolve_arch, resolve_config

    if not args.arch:
        raise ValueError("ARCH is required (or --resume RUN_DIR)")
    spec = resolve_arch(args.arch)
    overrides = _parse_overrides(args.overrides)
    if args.layers is not None and spec.space != "darts":
        raise ValueError("--layers applies to DARTS cells; NAS-Bench-201 networks take --cells")
    if args.cells is not None and spec.space != "nb201":
        raise ValueError("--cells applies to NAS-Bench-201 cells; DARTS networks take --layers")
    dataset = args.dataset
    if dataset and Path(dataset).expanduser().exists():  # keep paths absolute so --resume works from anywhere
        dataset = str(Path(dataset).expanduser().resolve())
    flags = {"dataset": dataset, "epochs": args.epochs, "batch_size": args.batch_size, "channels": args.channels,
             "layers": args.layers, "cells": args.cells, "train_images": args.train_images,
             "test_images": args.test_images, "seed": args.seed, "sync_bn": args.sync_bn}
    for k, v in flags.items():
        if v is not None:
            if k in overrides:
                raise ValueError(f"--set {k}=... repeats a flag given on its own; use one of them")
            overrides[k] = v
    if "batch_size" in overrides and "eval_batch_size" not in overrides:
        overrides["eval_batch_size"] = overrides["batch_size"]
    cfg = resolve_config(spec.space, spec.arch, args.protocol, arch_name=spec.name, **overrides)
    opts = TrainOptions(data_root=args.data, device=args.device or "auto", amp=args.amp,
                        channels_last=bool(args.channels_last), compile=args.compile,
                        workers=4 if args.workers is None else args.workers, tensorboard=bool(args.tensorboard),
                        checkpoint_every_steps=args.checkpoint_every_steps or 0,
                        checkpoint_minutes=10.0 if args.checkpoint_minutes is None else args.checkpoint_minutes,
                        progress=not args.no_progress, threads=args.threads)
    name = (spec.name or spec.space).lower().replace("_", "-")
    run_dir = Path(args.out) if args.out else (
        Path("runs") / f"train-{name}-{cfg.protocol}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    _refuse_used_run_dir(run_dir)
    return cfg, opts, run_dir


def _resumed_training(args):
    import dataclasses

    from .search.loop import RunFolderError
    from .train import TrainConfig, TrainOptions

    _refuse_resume_settings(args, _TRAIN_RESUME_OK, "training")
    run_dir = Path(args.resume)
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunFolderError(f"{run_dir}: not a run folder (no config.json)")
    try:
        with open(path) as f:
            saved = json.load(f)
        cfg, opts = TrainConfig.from_dict(saved["config"]), TrainOptions.from_dict(saved["run"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RunFolderError(f"{path}: not a readable training config ({type(e).__name__}: {_one_line(e)})") from e
    changes = _resume_changes(args, (("device", args.device), ("threads", args.threads), ("data_root", args.data),
                                     ("workers", args.workers), ("checkpoint_every_steps", args.checkpoint_every_steps),
                                     ("checkpoint_minutes", args.checkpoint_minutes)))
    if args.tensorboard:
        changes["tensorboard"] = True
    return cfg, dataclasses.replace(opts, **changes), run_dir


def cmd_train(args, parser) -> int:
    """``gaea train``: train (or resume training) a cell; prints its test accuracy."""
    from .train import TrainError, TrainInterrupted, run_train

    settings, code = _command_settings(lambda: _resumed_training(args) if args.resume else _new_training(args),
                                       parser.train_parser)
    if code:
        return code
    cfg, opts, run_dir = settings
    result, code = _run_command(lambda: run_train(cfg, opts, run_dir, resume=bool(args.resume)),
                                "train", run_dir, TrainInterrupted, (TrainError,))
    if code:
        return code
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {run_dir}")
        print(f"test top1 {100 * result['test_top1']:.2f}% (best {100 * result['best_test_top1']:.2f}% at epoch "
              f"{result['best_epoch']}), {result['params'] / 1e6:.3f} M parameters, {result['macs']:.1f} M MACs")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gaea`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "search":
        return cmd_search(args, parser)
    if args.command == "lookup":
        return cmd_lookup(args)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "report":
        from .report import run_report_command
        return run_report_command(args)
    if args.command == "train":
        return cmd_train(args, parser)
    return cmd_plot(args)
