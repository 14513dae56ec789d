"""`vitkit <command>`: parses arguments and joins the library's pieces; the work itself lives in the library.

A VitkitError (bad file, bad option) prints as one `error: ...` line with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import VitkitError

if TYPE_CHECKING:  # torch is imported by the commands that need it: parsing and --help stay fast
    import torch


def _parse_set(items: list[str]) -> dict[str, Any]:
    """--set key=value pairs; values are read as YAML (numbers, lists, true/false)."""
    import yaml

    from .train.config import parse_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise VitkitError(f"--set expects key=value, got {item!r}")
        try:
            parsed = parse_yaml(value)
        except yaml.YAMLError as e:
            raise VitkitError(f"--set {item}: not a YAML value ({str(e).splitlines()[0]}); quote strings, "
                              "e.g. --set 'model_kwargs={depth: 7}'") from e
        if isinstance(parsed, dict) and None in parsed.values():  # {depth:7} is one key "depth:7" to YAML
            raise VitkitError(f"--set {item}: write a space after each colon, e.g. --set 'model_kwargs={{depth: 7}}' "
                              "(YAML reads depth:7 as one word, and 16:0 as the number 960)")
        out[key.strip().replace("-", "_")] = parsed
    return out


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a count, top-k)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {text!r}")
    return int(text)


# ---------------------------------------------------------------- train
DATA_DIR_HELP = "where dataset files are (else $VITKIT_DATA, system paths, download)"


def _run_overrides(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """Recipe fields given on the command line: the flags and ``more`` that were given, then --set."""
    flags = dict(dataset=args.dataset, data_dir=args.data_dir, output=args.output, epochs=args.epochs, steps=args.steps,
                 batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                 warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, precision=args.precision,
                 seed=args.seed, img_size=args.img_size, drop_path_rate=args.drop_path_rate, workers=args.workers,
                 distill_from=args.distill_from, distill=args.distill, device=args.device,
                 val_from_train=args.val_from_train, **more)
    sets = _parse_set(args.set)
    twice = [k for k in sets if flags.get(k) is not None]
    if twice:
        raise VitkitError(f"{twice[0]} is given twice, as a flag and with --set; give it once")
    return {**{k: v for k, v in flags.items() if v is not None}, **sets}  # --set k=null is given: it switches k off


def cmd_train(args: argparse.Namespace, **more: Any) -> int:
    from .train import TrainConfig, train
    from .train.checkpoint import load_train_state

    overrides = _run_overrides(args, model=args.model, labels_per_class=getattr(args, "labels_per_class", None),
                               **more)
    if args.resume:
        if args.overwrite:
            raise VitkitError(f"--resume {args.resume} continues the run and --overwrite would delete it; "
                              "choose one")
        if args.output and Path(args.output).resolve() != Path(args.resume).resolve():
            raise VitkitError(f"--resume {args.resume} continues that run in its own folder; drop --output "
                              f"{args.output}")
        if args.config:
            raise VitkitError(f"--resume {args.resume} continues with the configuration stored in the run; "
                              f"--config {args.config} would not be read: drop it, or change fields with flags "
                              f"or --set")
        stored = load_train_state(args.resume)["config"]
        cfg = TrainConfig.from_dict({**stored, **overrides, "output": args.resume})
    else:
        cfg = TrainConfig.from_sources(args.config, **overrides)
    train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from scratch",
                       description="Train a ViT. Options come from defaults, then --config YAML, then flags.")
    p.add_argument("--model", help="registry name, see `vitkit models`").recipe_field = "model"
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished epoch with "
                   "the configuration it started with; flags and --set still change fields (e.g. --epochs)")
    _add_labels_per_class(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_train)


def _add_labels_per_class(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels-per-class", type=float, metavar="K", help="train on K labelled images of each class "
                   "(or a fraction below 1 of each), a fixed class-balanced draw by --seed").recipe_field = \
        "labels_per_class"


# ---------------------------------------------------------------- pretrain
MAE_DEFAULT_MODEL = "mae_vit_mini_patch4_28"


def cmd_pretrain(args: argparse.Namespace) -> int:
    """An MAE run is a training run with ``objective: mae``; resume, recipes and run folders are train's."""
    if not args.resume and not args.model and not (args.config and "model" in _recipe(args.config)):
        args.model = MAE_DEFAULT_MODEL
    return cmd_train(args, objective=args.method, mask_ratio=args.mask_ratio)


def _recipe(path: str) -> dict[str, Any]:
    from .train.config import load_yaml
    return load_yaml(path)


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining on unlabeled images (MAE)",
                       description="Pretrain a ViT as a masked autoencoder (He et al. 2021) on images alone: labels, "
                                   "if the dataset has any, are ignored, and a folder: needs no class folders. The "
                                   "run folder is a checkpoint `vitkit finetune --checkpoint RUN` fine-tunes.")
    p.add_argument("--method", choices=["mae"], default="mae", help="the self-supervised objective")
    p.add_argument("--model", help=f"an mae_* name (default {MAE_DEFAULT_MODEL}) or a plain ViT's name as the "
                   "encoder (with the paper's 8 x 512 decoder unless --set model_kwargs says otherwise)"
                   ).recipe_field = "model"
    p.add_argument("--mask-ratio", type=float, help="share of each image's patches removed (default 0.75)"
                   ).recipe_field = "mask_ratio"
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished epoch")
    _add_run_options(p)
    p.set_defaults(func=cmd_pretrain)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    sets = _parse_set(args.set)
    if "model" in sets:
        raise VitkitError("vitkit finetune trains the model its --checkpoint holds, so model does not apply; give "
                          "what the weights cannot tell with --set 'model_kwargs={num_heads: N}'")
    if "init_from" in sets:
        raise VitkitError("vitkit finetune starts from --checkpoint; drop --set init_from")
    probe = True if args.linear_probe else None
    start = str(_hub_ref(args.pretrained)) if args.pretrained else args.checkpoint
    cfg = TrainConfig.from_sources(args.config, **_run_overrides(args, init_from=start, layer_decay=args.layer_decay,
                                                                 linear_probe=probe,
                                                                 labels_per_class=args.labels_per_class))
    train(cfg, overwrite=args.overwrite)
    return 0


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune pretrained weights on a dataset (new zero-initialised head)",
                       description="Fine-tune as the ViT paper does: pretrained body, zero-initialised D x K head, "
                                   "position embeddings resampled when --img-size changes the grid.")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--checkpoint", help="pretrained weights: vitkit folder, timm, HF or .npz")
    start.add_argument("--pretrained", metavar="NAME", help=PRETRAINED_HELP)
    p.add_argument("--linear-probe", action="store_true", help="train only the head (frozen body)")
    p.add_argument("--layer-decay", type=float, help="layer-wise learning-rate decay, e.g. 0.75")
    _add_labels_per_class(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_finetune)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    first = len(p._actions)
    p.add_argument("--config", help="YAML recipe (any TrainConfig field)")
    p.add_argument("--dataset", help="fashion-mnist | digits | folder:PATH")
    p.add_argument("--val-from-train", type=float, metavar="SHARE", help="validate on this share of the training "
                   "images (a fixed, class-balanced draw; a count per class if >= 1), so that the held-out split is "
                   "seen only by the final report").recipe_field = "val_from_train"
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--output", help="run folder: checkpoints, metrics.jsonl, curves.png, eval.json")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --output (else refused)")
    p.add_argument("--epochs", type=int, help="passes over the training set (default: enough for 600 optimiser "
                   "steps, at least 10)")
    p.add_argument("--steps", type=_positive_int, help="train for this many optimiser steps instead of whole "
                   "epochs (the last epoch stops part-way): the same work whatever the dataset's size")
    p.add_argument("--batch-size", type=int, help="global batch size, split across torchrun processes (default: "
                   "about 50 steps an epoch, 32 to 256)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, help="AdamW's decoupled weight decay")
    p.add_argument("--warmup-epochs", type=float, help="linear warmup before the cosine decay")
    p.add_argument("--label-smoothing", type=float, help="share of each label spread over all classes")
    p.add_argument("--drop-path", type=float, dest="drop_path_rate", metavar="RATE",
                   help="stochastic depth rate of the last block")
    p.add_argument("--img-size", type=int, help="input size; position embeddings are resampled to it "
                   "(default: the model's own)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="auto: bf16 autocast where the "
                   "CPU or GPU has bf16 units; on other GPUs fp16 autocast with a loss scaler")
    _add_device(p, default=None)
    p.add_argument("--seed", type=int, help="weights, data order and augmentation")
    p.add_argument("--workers", type=int, help="data-loading processes for image folders")
    p.add_argument("--distill-from", metavar="TEACHER", help="teacher checkpoint for DeiT distillation (a vitkit "
                   "folder, e.g. a CNN trained with recipes/fmnist-cnn.yaml): a deit_*_distilled_* model learns it "
                   "on its distillation token, any other model on its one head; --set distill_cache=true runs the "
                   "teacher once over the training images instead of on every batch")
    p.add_argument("--distill", choices=["hard", "soft"], help="distillation loss (default hard, DeiT's best)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe field, e.g. --set clip_grad=0.5 (repeatable)")
    for action in p._actions[first:]:  # their parser default is None so that a --config recipe can set them
        action.recipe_field = action.dest


PRETRAINED_HELP = ("pretrained weights by name, from the Hugging Face Hub into its cache (HF_HUB_CACHE; "
                   "HF_HUB_OFFLINE=1: the cache only): timm's ARCHITECTURE.TAG, e.g. "
                   "vit_base_patch16_224.augreg2_in21k_ft_in1k, a bare architecture for its default weights, or "
                   "hf-hub:ORG/NAME; NAME@REVISION pins a commit, branch or tag (`vitkit models --pretrained` lists "
                   "the names vitkit knows)")


def _hub_ref(name: str) -> Any:
    from .weights.hub import resolve

    return resolve(name)


def _add_source(p: argparse.ArgumentParser, what: str = "a vitkit run or checkpoint folder") -> None:
    """--checkpoint PATH, or --model NAME: pretrained weights from the Hub."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=what)
    source.add_argument("--model", metavar="NAME", help=PRETRAINED_HELP)


def _source(args: argparse.Namespace) -> str:
    """What to load: the --checkpoint path, or the Hub repo --model names (hf-hub:ORG/NAME[@REV]),
    which every loader reads as it reads a folder."""
    return str(_hub_ref(args.model)) if args.model else args.checkpoint


def _beside(source: str, suffix: str) -> Path:
    """A file or folder named after pretrained weights, in the working directory (not in the Hub's cache)."""
    return Path(_hub_ref(source).name + suffix)


def _add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    from .device import DEVICE_HELP

    p.add_argument("--device", default=default, metavar="DEVICE", help=DEVICE_HELP)


# ---------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from .allocator import keep_freed_memory
    from .fileio import write_json
    from .train import evaluate_checkpoint
    from .train.plots import plot_confusion

    keep_freed_memory()
    source = _source(args)
    metrics = evaluate_checkpoint(source, args.dataset, args.split, data_dir=args.data_dir,
                                  precision=args.precision, batch_size=args.batch_size, flip_tta=args.flip_tta,
                                  device=args.device)
    out = Path(args.out) if args.out else _beside(source, "-eval") if args.model else _default_eval_out(Path(source))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", metrics)
    plot_confusion(metrics["confusion"], metrics["classes"], out / "confusion.png")
    if args.json:
        print(json.dumps(metrics))
    else:
        top5 = f"  top-5 {100 * metrics['top5']:.2f}%" if len(metrics["classes"]) > 5 else ""  # else always 100%
        print(f"{metrics['dataset']} [{metrics['split']}] {metrics['num_samples']} images: "
              f"top-1 {100 * metrics['top1']:.2f}%{top5}")
        for name, acc in metrics["per_class"].items():
            print(f"  {name:>20s}  {100 * acc:6.2f}%")
        print(f"confusion matrix: {out / 'confusion.png'}")
    return 0


def _default_eval_out(checkpoint: Path) -> Path:
    """CHECKPOINT/eval for a run folder; beside a weights file, FILE-eval."""
    return checkpoint / "eval" if checkpoint.is_dir() else checkpoint.with_name(checkpoint.stem + "-eval")


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    _add_source(p, "checkpoint folder")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--split", choices=["train", "val", "test", "all"],
                   help="val is the held-out part (the test split for fashion-mnist and digits); all: every image "
                   "of a folder (default: test, or all for a folder of class folders the model did not train on)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass")
    _add_device(p)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "auto", "fp16"],
                   help="as vitkit predict and serve run the model (prepare_for_inference): bf16 weights or int8 "
                   "linears are faster and move top-1 by ~0.1 points; measure it here (default fp32, the reference)")
    p.add_argument("--out", help="folder for eval.json and confusion.png (default CHECKPOINT/eval, or NAME-eval "
                   "for --model NAME)")
    p.add_argument("--flip-tta", action="store_true", help="average each image's logits with its mirror image's "
                   "(test-time augmentation; twice the work; only for classes that mirroring does not change)")
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5 as fractions, ...)")
    p.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from .progress import progress

    from .allocator import keep_freed_memory
    from .data.images import max_image_pixels
    from .inference.predict import expand_inputs, load_classifier, predict_files

    max_image_pixels()  # a typo in $VITKIT_MAX_IMAGE_PIXELS: one error now, not one per image
    keep_freed_memory()  # big batches then run whole, faster than in slices (see slice_size)
    classifier, cfg, _ = load_classifier(_source(args), args.precision, _onnx_file(args), device=args.device)
    paths = expand_inputs(args.inputs)
    bar = progress(total=len(paths), disable=len(paths) < 2 * args.batch_size, unit="img")
    results = list(predict_files(classifier, paths, cfg, args.topk, args.batch_size, on_batch=bar.update))
    bar.close()
    errors = [r for r in results if r.error]
    if args.json:
        print(json.dumps({"predictions": [r.to_dict() for r in results if not r.error],
                          "errors": [r.to_dict() for r in errors]}))
    else:
        for r in results:
            if not r.error:
                print(f"{r.path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in r.topk))
    for r in errors:
        print(f"error: {r.error}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {len(results)} file(s) could not be read", file=sys.stderr)
    return 1 if errors else 0


def _onnx_file(args: argparse.Namespace) -> Path | None:
    """The ONNX file --onnx / --runtime onnx ask for (None: run the checkpoint in PyTorch)."""
    if not (args.onnx or args.runtime == "onnx"):
        return None
    if args.precision != "auto":  # the file's own graph runs as exported, in fp32
        raise VitkitError(f"--precision {args.precision} applies to the torch runtime; ONNX Runtime runs the "
                          "exported fp32 graph: drop --precision, or drop --runtime onnx / --onnx")
    if args.model and not args.onnx:
        raise VitkitError(f"--runtime onnx with --model {args.model}: name the exported file with --onnx FILE "
                          f"(`vitkit export --model {args.model}` writes {_beside(args.model, '.onnx')})")
    return Path(args.onnx or Path(args.checkpoint) / "model.onnx")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8", "fp16"],
                   help="auto: bf16 where the CPU or GPU has bf16 units (logits within ~1%% of fp32), else fp32 "
                   "(CPU) or fp16 (GPU)")
    _add_device(p)
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                   help="onnx: run CHECKPOINT/model.onnx (made by `vitkit export`) with ONNX Runtime")
    p.add_argument("--onnx", metavar="FILE", help="the ONNX file to run (implies --runtime onnx; default "
                   "CHECKPOINT/model.onnx); the checkpoint still gives the classes and preprocessing")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images or folders of images")
    p.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files, or folders read recursively")
    _add_source(p)
    p.add_argument("--topk", type=_positive_int, default=5, help="classes listed per image")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass")
    _add_runtime_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)


# ---------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from .data.images import max_image_pixels
    from .serve import ModelSource, ServerOptions, ServeSettings, serve

    max_image_pixels()  # a typo in $VITKIT_MAX_IMAGE_PIXELS: refused now, not in every request's answer
    onnx, source = _onnx_file(args), _source(args)
    model = ModelSource(source, args.precision, str(onnx) if onnx else None, args.topk, args.device)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                             body_timeout=args.timeout)
    options = ServerOptions(args.host, args.port, args.workers, header_timeout=args.timeout,
                            max_connections=args.max_connections)
    host = {"0.0.0.0": "<this machine>", "::": "<this machine>"}.get(args.host, args.host)
    host = f"[{host}]" if ":" in host else host

    def announce(port: int) -> None:
        print(f"serving {source} at http://{host}:{port}/  (POST /predict with an image as the body; API docs "
              "at /docs; Ctrl-C stops)", file=sys.stderr, flush=True)

    serve(model, settings, options, announce)
    return 0


def _non_negative_float(text: str) -> float:
    """argparse type: a number >= 0 (milliseconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a number > 0 (seconds)."""
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP API (POST /predict) and a page to try a checkpoint in a browser")
    _add_source(p)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (no authentication!)")
    p.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    p.add_argument("--topk", type=_positive_int, default=5, help="default top-k of /predict (?topk=K overrides)")
    _add_runtime_options(p)
    p.add_argument("--max-batch", type=_positive_int, default=32,
                   help="most images per forward pass: concurrent requests are classified together")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=5.0,
                   help="how long the first image of a batch waits for others to join (default 5)")
    p.add_argument("--max-queue", type=_positive_int, default=256,
                   help="images waiting for the model before a request is answered 503 (default 256)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes, each with its own model on 1/N of the cores (1 is fastest on 2 cores; "
                   "see docs/serving.md)")
    p.add_argument("--timeout", type=_positive_float, default=10.0,
                   help="seconds a client may take to send a request's headers, and again its body (default 10)")
    p.add_argument("--max-connections", type=_positive_int, default=1024,
                   help="open connections at once; past it a 503 at once (default 1024)")
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from .inference import export
    from .weights import load_checkpoint

    source = _source(args)
    model, _ = load_checkpoint(source)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    default = _beside(source, suffix) if args.model else Path(source) / f"model{suffix}"
    print(export(model, args.out or default, format=args.format))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript")
    _add_source(p)
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="what to write")
    p.add_argument("--out", help="output file (default CHECKPOINT/model.onnx or model.torchscript.pt; NAME.onnx or "
                   "NAME.torchscript.pt for --model NAME)")
    p.set_defaults(func=cmd_export)


# ---------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    from .models import get_model_spec, list_models, model_flops, model_param_count
    from .progress import progress

    if args.pretrained:
        return _list_pretrained(args.pattern, args.json)
    names = list_models(args.pattern)
    if not names:
        raise VitkitError(f"no model matches {args.pattern!r}")
    flops = {n: model_flops(n) for n in progress(names, desc="counting FLOPs")} if args.flops else {}
    rows = [(n, model_param_count(n), get_model_spec(n).input_size) for n in names]
    if args.json:
        print(json.dumps([{"name": n, "params": p, "input_size": list(s), **({"gflops": flops[n] / 1e9} if flops else {})}
                          for n, p, s in rows]))
        return 0
    print(f"{'model':36s} {'params':>12s}  {'input':9s}" + (f" {'GFLOPs':>8s}" if flops else ""))
    for n, p, s in rows:
        print(f"{n:36s} {p:12,d}  {s[0]}x{s[1]}x{s[2]:<5d}" + (f" {flops[n] / 1e9:8.3f}" if flops else ""))
    return 0


def _list_pretrained(pattern: str, as_json: bool) -> int:
    """The pretrained weights vitkit knows for the models it has, each architecture's default first."""
    from dataclasses import asdict

    from .models import list_models, list_pretrained

    known = set(list_models())
    rows = [cfg for cfg in list_pretrained(pattern) if cfg.architecture in known]
    if not rows:
        raise VitkitError(f"no pretrained weights match {pattern!r}")
    if as_json:
        print(json.dumps([{**asdict(cfg), "repo": cfg.hf_hub_id} for cfg in rows]))
        return 0
    print(f"{'pretrained weights (--model / --pretrained NAME)':50s} {'classes':>7s} {'input':>9s} {'crop':>5s}  "
          "mean/std  what")
    for cfg in rows:
        stats = "0.5" if cfg.mean == (0.5,) * 3 and cfg.std == (0.5,) * 3 else "ImageNet"
        print(f"{cfg.name:50s} {cfg.num_classes or '-':>7} {'x'.join(map(str, cfg.input_size)):>9s} "
              f"{cfg.crop_pct:5.3g}  {stats:8s}  {cfg.description}")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts, or their pretrained weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'vit_base*'")
    p.add_argument("--pretrained", action="store_true", help="list the pretrained weights vitkit knows by name "
                   "(timm's ARCHITECTURE.TAG, on the Hugging Face Hub as timm/ARCHITECTURE.TAG)")
    p.add_argument("--flops", action="store_true", help="also count each model's GFLOPs per image (a multiply-add "
                   "is 2), on the meta device: no weights needed, a second or so per model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


# ---------------------------------------------------------------- explain
def _load_images(paths: list[Path], cfg: dict[str, Any]) -> tuple[list[Path], Any, list[Any]]:
    """Readable images as (paths, uint8 batch, HWC arrays for overlays); unreadable ones are reported
    on stderr and left out."""
    import torch

    from .data import EvalResize, load_resized

    good, tensors, resize = [], [], EvalResize.from_config(cfg)
    for path in paths:
        try:
            tensors.append(load_resized(path, cfg["img_size"], cfg["in_chans"], resize))
            good.append(path)
        except VitkitError as e:
            print(f"error: {e}", file=sys.stderr)
    if not good:
        raise VitkitError("none of the images could be read")
    batch = torch.stack(tensors)
    originals = [t.permute(1, 2, 0).numpy() for t in tensors]
    return good, batch, [o[..., 0] if o.shape[2] == 1 else o for o in originals]


def cmd_explain(args: argparse.Namespace) -> int:
    from .data.images import max_image_pixels
    from .models import MaskedAutoencoderViT
    from .weights import load_checkpoint

    max_image_pixels()  # a typo in $VITKIT_MAX_IMAGE_PIXELS: one error now, not one per image
    from .device import resolve_device

    source = _source(args)
    model, cfg = load_checkpoint(source)
    args.device = resolve_device(args.device)
    model = model.to(args.device)  # the images follow it there; figures come back to the CPU
    if not hasattr(model, "blocks"):
        raise VitkitError(f"{source}: explain draws a Vision Transformer's attention; this checkpoint "
                          f"holds a {type(model).__name__}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MaskedAutoencoderViT) and args.figure != "embeddings":
        return _explain_reconstructions(model, cfg, args, out)
    if args.figure == "attention-distance":
        return _explain_attention_distance(model, cfg, args, out)
    if args.figure == "embeddings":
        from .explain import model_figures

        for name, path in model_figures(model, out).items():
            print(f"{name}: {path}")
        return 0
    return _explain_images(model, cfg, args, out)


def _explain_attention_distance(model: torch.nn.Module, cfg: dict, args: argparse.Namespace, out: Path) -> int:
    """The paper's Fig. 7 (right) over ``--limit`` images of a dataset split."""
    from .data import make_loader, normalize
    from .explain import attention_distance_figure

    ds = _explain_dataset(cfg, args)

    def batches() -> Iterator[torch.Tensor]:  # exactly --limit images, the last batch cut short
        left = args.limit
        for x, _ in make_loader(ds, min(64, args.limit), shuffle=True, seed=0):
            if left <= 0:
                return
            yield normalize(x[:left].to(args.device), cfg["mean"], cfg["std"])
            left -= len(x)

    dist = attention_distance_figure(model, batches(), out / "attention_distance.png")
    (out / "attention_distance.json").write_text(json.dumps({"mean_distance_px": dist.tolist()}))
    print(f"mean attention distance per layer (px): {[round(float(d.mean()), 2) for d in dist]}")
    print(f"figure: {out / 'attention_distance.png'}")
    return 0


def _explain_reconstructions(model: torch.nn.Module, cfg: dict, args: argparse.Namespace, out: Path) -> int:
    """An MAE's reconstructions of the given images, or of the first 8 of --dataset's --split."""
    import torch

    from .explain import explain_reconstructions
    from .inference.predict import expand_inputs

    if args.figure:
        raise VitkitError(f"--figure {args.figure} draws a classifier's attention; an MAE checkpoint is explained by "
                          "its reconstructions (give images, or --dataset)")
    requested = expand_inputs(args.images) if args.images else []
    if requested:
        paths, batch, _ = _load_images(requested, cfg)
        names = [str(p) for p in paths]
    else:
        ds = _explain_dataset(cfg, args)
        batch = torch.stack([ds[i][0] for i in range(min(8, len(ds)))])
        names = [f"{args.split} image {i}" for i in range(len(batch))]
    mask_ratio = cfg.get("recipe", {}).get("mask_ratio", model.mask_ratio)
    result = explain_reconstructions(model, batch, names, cfg["mean"], cfg["std"], out, mask_ratio)
    print(f"reconstructions: {result['reconstructions']}")
    print(f"report: {result['report']}")
    return 0 if len(names) == len(requested) or not requested else 1


def _explain_dataset(cfg: dict, args: argparse.Namespace) -> Any:
    """The split of --dataset (or the checkpoint's dataset) that a dataset-level figure reads."""
    from .data import EvalResize, load_dataset

    if not args.dataset and not cfg.get("dataset"):
        raise VitkitError("--dataset is needed to draw from (the checkpoint names none), or give images")
    return load_dataset(args.dataset or cfg["dataset"], args.split, data_dir=args.data_dir,
                        img_size=cfg["img_size"], in_chans=cfg["in_chans"], resize=EvalResize.from_config(cfg))


def _explain_images(model: torch.nn.Module, cfg: dict, args: argparse.Namespace, out: Path) -> int:
    """Attention per layer and head, and rollout, for each image, in one HTML report."""
    from .data import normalize
    from .explain import explain_images
    from .inference.predict import expand_inputs

    if not args.images:
        raise VitkitError("give image files or folders to explain, or --figure attention-distance|embeddings")
    requested = expand_inputs(args.images)
    paths, batch, originals = _load_images(requested, cfg)
    batch = normalize(batch.to(args.device), cfg["mean"], cfg["std"])
    result = explain_images(model, batch, originals, [str(p) for p in paths],
                            cfg["classes"], out, token=args.token, head_fusion=args.head_fusion)
    print(f"report: {result['report']}")
    return 0 if len(paths) == len(requested) else 1


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="attention maps, rollout, the ViT paper's figures and an HTML report "
                       "(an MAE checkpoint: its reconstructions of masked images)")
    p.add_argument("images", nargs="*", metavar="IMG_OR_DIR", help="images to explain (not needed for --figure)")
    _add_source(p)
    p.add_argument("--out", required=True, help="folder for the PNGs and report.html")
    p.add_argument("--figure", choices=["attention-distance", "embeddings"],
                   help="a model-level figure instead of per-image explanations")
    p.add_argument("--dataset", help="for --figure attention-distance, and an MAE's reconstructions without images "
                   "(default: the checkpoint's)")
    p.add_argument("--data-dir", help="where dataset files are (with --dataset)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split --dataset draws from")
    p.add_argument("--limit", type=_positive_int, default=1024, help="images averaged for --figure attention-distance")
    p.add_argument("--token", type=int, help="prefix token whose attention is drawn: 0 the [class] token, 1 a "
                   "distilled model's distillation token (default: what the head reads)")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"],
                   help="how rollout combines the heads of a layer")
    _add_device(p)
    p.set_defaults(func=cmd_explain)


# ---------------------------------------------------------------- samples, convert
def cmd_samples(args: argparse.Namespace) -> int:
    from .data import load_dataset, save_samples

    ds = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    for path in save_samples(ds, args.out, args.count, args.seed):
        print(path)
    return 0


def add_samples(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="write a few dataset images as PNG files")
    p.add_argument("--dataset", required=True, help="fashion-mnist | digits | folder:PATH")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="split to draw from (all: every image of a folder)")
    p.add_argument("--count", type=_positive_int, default=8, help="images to write")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn")
    p.add_argument("--out", required=True, help="folder for the PNG files (named <index>_<class>.png)")
    p.set_defaults(func=cmd_samples)


def cmd_shards(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .data.shards import write_shards

    for split in args.splits:
        ds = load_dataset(args.dataset, split, data_dir=args.data_dir)
        files = write_shards(ds, args.out, split, args.shard_size)
        print(f"{split}: {len(ds)} images in {len(files)} shard(s) -> {args.out}")
    return 0


def add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write a dataset as WebDataset .tar shards (train then with --dataset "
                       "shards:DIR)")
    p.add_argument("--dataset", required=True, help="fashion-mnist | digits | folder:PATH")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--out", required=True, help="folder for the .tar shards and _info.json")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "val", "test", "all"])
    p.add_argument("--shard-size", type=_positive_int, default=10_000, help="images per shard")
    p.set_defaults(func=cmd_shards)


def cmd_convert(args: argparse.Namespace) -> int:
    from .weights import convert

    print(convert(args.src, args.dst, to=args.to, name=args.model, mean=args.mean, std=args.std,
                  **_parse_set(args.set)))
    return 0


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert weights between vitkit, timm, Hugging Face (and read Google .npz)")
    p.add_argument("src", help="timm .safetensors/.pth, HF folder, Google .npz or vitkit folder")
    p.add_argument("dst", help="a folder for --to vitkit or hf, a .safetensors file for --to timm")
    p.add_argument("--to", default="vitkit", choices=["vitkit", "timm", "hf"])
    p.add_argument("--model", help="registry name to fill in what the weights cannot tell (e.g. head count)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="timm keyword override, e.g. --set num_heads=6 --set img_size=384")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="the input normalisation the weights were "
                   "trained with, one value per channel (a timm file records none), e.g. ImageNet's 0.485 0.456 0.406")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="with --mean, e.g. 0.229 0.224 0.225")
    p.set_defaults(func=cmd_convert)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_train, add_pretrain, add_finetune, add_eval, add_predict, add_serve, add_export, add_explain, add_models,
    add_samples, add_shards, add_convert]


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in --help; a recipe option's is TrainConfig's, looked up only when
    help is printed (importing the trainer costs a second that parsing should not pay)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        field = getattr(action, "recipe_field", None)
        if default is None and field is not None:
            from .train.config import TrainConfig

            default = getattr(TrainConfig(), field, None)
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: {default})".lstrip()


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vitkit", description="Vision Transformers: train, evaluate, explain.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line, without the library's file and line number
            return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vitkit eval --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except VitkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: exists as a file, is a folder, no permission, ...
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
