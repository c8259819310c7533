"""Command line: ``python -m samhw {study,evaluate,refine,segment,finetune,report,bench,split} ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_MODEL_HELP = ("litemedsam (default), vit_b, vit_l or vit_h, or a shipped fine-tuned model: litemedsam-lgg "
               "(LiteMedSAM with weights in samhw/weights, offline)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    parser.add_argument("--model", default="litemedsam", help=_MODEL_HELP)
    parser.add_argument("--checkpoint", help="weights: an official SAM checkpoint, a project checkpoint of the same model, "
                        "or a shipped model's name")
    parser.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds for random prompts (default 3)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--cache", help="embedding cache folder (default: $SAMHW_CACHE, else ~/.cache/samhw)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or inconsistent slices, counting and listing them, instead of stopping")
    parser.add_argument("--limit", type=_positive_int,
                        help="only N tumor slices of each split, evenly spread over its patients (quick runs)")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="prompts of one slice decoded together (default: 1 on CPU, 64 on CUDA)")
    parser.add_argument("--workers", type=_positive_int,
                        help="worker processes (default: on the CPU one per core, up to 8, each evaluating whole "
                             "slices with one thread; on a GPU up to 4, drawing prompts while the main process "
                             "decodes); 1 does everything in one process")
    parser.add_argument("--plain", action="store_true",
                        help="reference eager PyTorch path (no ONNX encoder, no fast decoder): slower, same masks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .cache import EmbeddingCache
    from .data import load_dataset
    from .evaluate import evaluate_to_csv, format_summary, run_config, summarize
    from .models import load_model
    from .prompts import parse_prompts

    specs = parse_prompts(args.prompts)
    model = load_model(args.model, args.checkpoint, args.device, plain=args.plain, cache_dir=args.cache)
    dataset = load_dataset(args.data, args.split, skip_bad=args.skip_bad, limit=args.limit)
    print(dataset.report(), file=sys.stderr)
    out = Path(args.out or f"runs/evaluate_{args.model}_{args.split}.csv")
    seeds = list(range(args.seeds))
    rows = evaluate_to_csv(out, run_config(model, dataset, specs, seeds), model, EmbeddingCache(model, args.cache),
                           dataset, specs, seeds, batch_size=args.batch_size, progress=not args.quiet,
                           workers=args.workers)
    print(format_summary(summarize(rows)))
    if dataset.skipped:
        print(f"\nSKIPPED {len(dataset.skipped)} bad slices; see the list above", file=sys.stderr)
    print(f"\nwrote {len(rows)} rows to {out}")


def _cmd_study(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .report import update_readme, write_comparison
    from .shipped import is_shipped
    from .study import StudyConfig, run_study

    out = args.out or f"results/{args.model}"
    config = StudyConfig(out, data=args.data, splits=args.splits, model=args.model, checkpoint=args.checkpoint,
                         seeds=args.seeds, device=args.device, cache_dir=args.cache, skip_bad=args.skip_bad,
                         limit=args.limit, batch_size=args.batch_size, workers=args.workers, plain=args.plain,
                         experiments=args.experiments, reuse=args.reuse or bool(args.finetuned),
                         progress=not args.quiet, command="python -m samhw " + " ".join(args.argv))
    datasets: dict = {}  # the splits read for the first study, reused by the second
    run_study(config, datasets)
    dirs = [out]
    tuned = Path(f"{out}-finetuned")
    if args.finetuned:
        dirs.append(str(tuned))
        run_study(replace(config, out=tuned, checkpoint=args.finetuned, reuse=args.reuse), datasets)
        record = None if is_shipped(args.finetuned) else args.finetuned  # a shipped model's run record stays
        print(f"wrote the comparison to {write_comparison(*dirs, checkpoint=record)}")
    elif (tuned / "summary.json").is_file():  # keep comparing with the fine-tuned results already there
        dirs.append(str(tuned))
        print(f"compared again with the fine-tuned results in {tuned}: {write_comparison(*dirs)}")
    if args.readme:
        changed = update_readme(args.readme, *dirs)
        print(f"{'updated' if changed else 'unchanged'}: results table in {args.readme}")


def _cmd_refine(args: argparse.Namespace) -> None:
    from .interactive import E5_ALL_STARTS, run_e5, summarize_e5

    starts = E5_ALL_STARTS if args.starts == ["all"] else args.starts
    out = Path(args.out or (f"results/{args.model}-finetuned" if args.checkpoint else f"results/{args.model}"))
    compare = args.compare
    pretrained = Path(f"results/{args.model}")
    if compare is None and out.resolve() != pretrained.resolve() and (pretrained / "e5_curve.csv").is_file():
        compare = str(pretrained)
    variants = {"both": (True, False), "yes": (True,), "no": (False,)}[args.mask_input]
    if args.summarize:
        summarize_e5(out, compare, args.clicks)
        return
    run_e5(out, data=args.data, splits=args.splits, model_name=args.model, checkpoint=args.checkpoint, starts=starts,
           seeds=args.seeds, variants=variants, max_clicks=args.clicks, device=args.device, cache_dir=args.cache,
           limit=args.limit, workers=args.workers, plain=args.plain, progress=not args.quiet,
           command="python -m samhw " + " ".join(args.argv), compare=compare)
    print(f"wrote {out}/e5_rows_*.csv, e5_curve.csv, e5_noc.csv, e5_tables.md and fig_e5_clicks.png"
          + (f" (and fig_e5_clicks_compare.png against {compare})" if compare else ""))


def _cmd_segment(args: argparse.Namespace) -> None:
    from PIL import Image

    from .data import DataError
    from .imageio import make_prompt, overlay, read_slice, write_mask
    from .models import load_model

    image = read_slice(args.image, args.slice)
    prompt = make_prompt(image.shape[:2], args.point or (), args.negative or (), args.box)
    out = Path(args.out)
    overlay_path = Path(args.overlay) if args.overlay else out.with_name(out.stem + "_overlay.png")
    for path in (out, overlay_path):
        if not path.parent.is_dir():
            raise DataError(path.parent, f"no such folder for {path.name}; create it or pick another --out")
    model = load_model(args.model, args.checkpoint, args.device)
    multimask = prompt.box is None and len(prompt.labels) == 1  # SAM's rule for a lone point
    masks, scores = model.predict(model.encode(image[None]), [prompt], image.shape[:2], multimask)
    write_mask(out, masks[0])
    Image.fromarray(overlay(image, masks[0], prompt)).save(overlay_path)
    print(f"mask: {int(masks[0].sum())} of {masks[0].size} pixels, predicted IoU {float(scores[0]):.3f} "
          f"({'best of 3' if multimask else 'single mask'}); wrote {out} and {overlay_path}")


def _cmd_report(args: argparse.Namespace) -> None:
    from .report import report_markdown, update_readme

    try:
        if args.readme:
            changed = update_readme(args.readme, *args.results)
            print(f"{'updated' if changed else 'unchanged'}: results, reading and targets in {args.readme}")
            if len(args.results) == 2:
                comparison = Path(args.results[1]) / "comparison.md"
                comparison.write_text(report_markdown(args.results) + "\n")
                print(f"wrote {comparison}")
        else:
            print(report_markdown(args.results))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def _cmd_split(args: argparse.Namespace) -> None:
    from .data import discover, resolve_data_dir, split_of

    root = resolve_data_dir(args.data)
    records, _ = discover(root)
    patients: dict[str, int] = {}
    for r in records:
        patients[r.patient] = patients.get(r.patient, 0) + 1
    lines = ["patient,split,slices"] + [f"{p},{split_of(p)},{n}" for p, n in sorted(patients.items())]
    text = "\n".join(lines) + "\n"
    if args.write:
        from .fileio import atomic_write_text

        atomic_write_text(args.write, text)
        print(f"wrote {len(patients)} patients to {args.write}")
    else:
        print(text, end="")
    totals: dict[str, list[int]] = {}
    for p, n in patients.items():
        t = totals.setdefault(split_of(p), [0, 0])
        t[0] += 1
        t[1] += n
    print("; ".join(f"{s}: {t[0]} patients, {t[1]} slices" for s, t in sorted(totals.items())), file=sys.stderr)


def _cmd_finetune(args: argparse.Namespace) -> None:
    from . import plots
    from .train import TRAIN_MIX, VAL_PROMPTS, FinetuneConfig, finetune, parse_mix

    defaults = FinetuneConfig()
    config = FinetuneConfig(
        model=args.model, checkpoint=args.checkpoint, parts=tuple(args.train or defaults.parts),
        epochs=args.epochs or defaults.epochs,
        batch_size=args.batch_size, lr=defaults.lr if args.lr is None else args.lr, weight_decay=args.weight_decay, seed=args.seed, limit=args.limit,
        val_limit=args.val_limit, mix=parse_mix(args.train_prompts) if args.train_prompts else tuple(TRAIN_MIX.items()),
        val_prompts=tuple(args.val_prompts or VAL_PROMPTS), augment=tuple(args.augment or ()),
        mask_loss=args.loss or defaults.mask_loss)
    out = args.out or f"runs/{args.model}-finetuned"
    best = finetune(config, out, data=args.data, device=args.device, cache_dir=args.cache, resume=args.resume,
                    skip_bad=args.skip_bad, progress=not args.quiet, command="python -m samhw " + " ".join(args.argv),
                    on_epoch=lambda folder, log: plots.save(plots.training_curves(log), folder / "curves.png"))
    print(f"best epoch {best['epoch']} (mean validation IoU {best['val_mean']:.4f}): {out}/best.pt\n"
          f"compare it with the pretrained model: python -m samhw study --model {args.model} --splits test train "
          f"--finetuned {out}/best.pt")


def _cmd_bench(args: argparse.Namespace) -> None:
    import re

    import torch

    from .bench import BenchConfig, run_bench

    config = BenchConfig(data=args.data, split=args.split, slices=args.slices, seeds=args.seeds, device=args.device,
                         model=args.model, checkpoint=args.checkpoint, repeat=args.repeat)
    device = torch.device(config.device)
    if args.out:
        out = args.out
    elif device.type == "cuda":
        out = "results/bench/cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    else:
        out = f"results/bench/cpu-{os.cpu_count()}core"
    record = Path(f"results/{args.model}/summary.json")
    study = json.loads(record.read_text()) if record.is_file() and device.type == "cpu" else None
    run_bench(config, out, study_record=study)
    if args.readme:
        from .report import replace_block

        body = Path(out).with_suffix(".md").read_text().replace("# Benchmark", "#### Benchmark", 1).strip()
        body += f"\n\nMade by `python -m samhw {' '.join(args.argv)}`; files `{out}.json` and `{out}.md`."
        replace_block(args.readme, "<!-- bench:start -->", "<!-- bench:end -->", body)
        print(f"wrote the benchmark into {args.readme}")


def _cmd_export(args: argparse.Namespace) -> None:
    from .shipped import export, weights_dir

    record = export(args.checkpoint, args.name, dtype=args.dtype, results=args.results, replace=args.replace,
                    command="python -m samhw " + " ".join(args.argv))
    test = "test scores of " + record["test"]["of"] if "iou" in record["test"] else "test scores " + record["test"]["absent"]
    print(f"wrote {weights_dir() / record['file']} ({record['bytes'] / 1e6:.1f} MB, {record['dtype']}: "
          f"{', '.join(record['parts'])}) and {record['name']}.json ({test}); "
          f"load it with --model {record['name']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m samhw", description="Prompting and fine-tuning SAM on LGG brain MRI.")
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="the main job: experiments E1-E3, results and figures under results/")
    _common(study)
    study.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test", "all"],
                       help="splits to evaluate (default: test)")
    study.add_argument("--experiments", nargs="+", default=["E1", "E2", "E3", "E6"], choices=["E1", "E2", "E3", "E6"])
    study.add_argument("--out", help="results folder (default results/<model>)")
    study.add_argument("--readme", help="also rewrite the results table of this README")
    study.add_argument("--finetuned", metavar="CHECKPOINT",
                       help="also run the study with this fine-tuned checkpoint (of --model, or a shipped model's name) into <out>-finetuned and "
                            "compare it with the pretrained model (the report's Table I and figures 4-5)")
    study.add_argument("--reuse", action="store_true",
                       help="keep a split's rows made with exactly this configuration instead of evaluating again "
                            "(always on for the pretrained side of --finetuned)")
    study.set_defaults(func=_cmd_study)

    evaluate = sub.add_parser("evaluate", help="evaluate chosen prompts; one CSV row per (prompt, seed, slice)")
    _common(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    evaluate.add_argument("--prompts", nargs="+", required=True,
                          help="strategy names or box:M, joined with + for combinations, e.g. box:0 box:-20 "
                               "center_gaussian center_mask+background random_gaussian:sigma=50")
    evaluate.add_argument("--out", help="CSV file (default runs/evaluate_<model>_<split>.csv)")
    evaluate.set_defaults(func=_cmd_evaluate)

    refine = sub.add_parser("refine", help="E5: a first prompt, then correction clicks (mIoU after k clicks, NoC)")
    refine.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    refine.add_argument("--model", default="litemedsam", help="litemedsam (default), vit_b, vit_l or vit_h")
    refine.add_argument("--checkpoint", help="weights (a fine-tuned checkpoint: results go to results/<model>-finetuned)")
    refine.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test", "all"])
    refine.add_argument("--starts", nargs="+", default=["center_inside", "box:0", "box:20"],
                        help="first prompts (default: center_inside box:0 box:20); 'all' for every E5 start "
                             "(each E2/E3 single point as well)")
    refine.add_argument("--seeds", type=_positive_int, default=1, help="seeds of a random start (default 1)")
    refine.add_argument("--clicks", type=_positive_int, default=20, help="correction clicks (default 20)")
    refine.add_argument("--mask-input", choices=["both", "yes", "no"], default="both",
                        help="feed the previous low-resolution logits back as mask_input: both variants (default), "
                             "yes or no")
    refine.add_argument("--out", help="results folder (default results/<model>, or results/<model>-finetuned "
                                      "with --checkpoint)")
    refine.add_argument("--compare", metavar="DIR", help="another E5 folder to draw beside this one (default: "
                        "results/<model> when writing elsewhere and it has E5 results)")
    refine.add_argument("--summarize", action="store_true",
                        help="only rebuild the tables and figures from the e5_rows_*.csv already in --out")
    refine.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    refine.add_argument("--cache", help="embedding cache folder (default: $SAMHW_CACHE, else ~/.cache/samhw)")
    refine.add_argument("--limit", type=_positive_int, help="only N tumor slices of each split (quick runs)")
    refine.add_argument("--workers", type=_positive_int, help="worker processes on the CPU (default: one per core)")
    refine.add_argument("--plain", action="store_true", help="reference eager PyTorch path: slower, same masks")
    refine.add_argument("--quiet", action="store_true", help="no progress bars")
    refine.set_defaults(func=_cmd_refine)

    segment = sub.add_parser("segment", help="segment your own slice (PNG, JPEG, TIFF, .npy, NIfTI) from points and a box")
    segment.add_argument("image", help="a PNG, JPEG, TIFF or .npy slice of any size, or a NIfTI volume with --slice")
    segment.add_argument("--slice", type=int, metavar="K", help="slice index along a NIfTI volume's third axis")
    segment.add_argument("--point", nargs=2, type=float, action="append", metavar=("X", "Y"),
                         help="a positive point at column X, row Y (repeatable)")
    segment.add_argument("--negative", nargs=2, type=float, action="append", metavar=("X", "Y"),
                         help="a negative (background) point (repeatable)")
    segment.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                         help="a box of pixel indices, corners included")
    segment.add_argument("--model", default="litemedsam", help="litemedsam (default), vit_b, vit_l or vit_h")
    segment.add_argument("--checkpoint", help="weights: a fine-tuned samhw checkpoint or an official SAM file")
    segment.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    segment.add_argument("--out", required=True, help="the mask PNG (255 on the mask)")
    segment.add_argument("--overlay", help="the overlay PNG (default: <out>_overlay.png beside the mask)")
    segment.set_defaults(func=_cmd_segment)

    report = sub.add_parser("report", help="a results folder's tables, paired comparisons and reading as Markdown (from "
                            "its rows), or write them into the README")
    report.add_argument("results", nargs="+", help="a folder written by study, e.g. results/litemedsam; or two, "
                        "pretrained then fine-tuned, for the comparison")
    report.add_argument("--readme", help="rewrite the results, reading and targets blocks of this file (and, for two "
                        "folders, the second one's comparison.md)")
    report.set_defaults(func=_cmd_report)

    bench = sub.add_parser("bench", help="time the plain eager path against samhw's path on the same slices")
    bench.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    bench.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    bench.add_argument("--slices", type=_positive_int, default=8, help="slices for the study subset (default 8)")
    bench.add_argument("--seeds", type=_positive_int, default=3)
    bench.add_argument("--model", default="litemedsam", help=_MODEL_HELP)
    bench.add_argument("--checkpoint")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--repeat", type=_positive_int, default=5, help="timed repetitions (median reported)")
    bench.add_argument("--out", help="results file stem (default results/bench/<device>)")
    bench.add_argument("--readme", help="also write the table into this README's bench block")
    bench.set_defaults(func=_cmd_bench)

    tune = sub.add_parser("finetune", help="fine-tune on the train split, select on the validation split (E4)")
    tune.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    tune.add_argument("--model", default="litemedsam", help=_MODEL_HELP)
    tune.add_argument("--checkpoint", help="starting weights (default: the model's bundled ones); a file or a shipped model's name")
    tune.add_argument("--out", help="run folder (default runs/<model>-finetuned): last.pt, best.pt, log.json, curves.png")
    tune.add_argument("--epochs", type=_positive_int, help="epochs (default 12)")
    tune.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    tune.add_argument("--train", nargs="+", choices=["decoder", "prompt_encoder", "image_encoder", "neck", "last_stage"],
                      help="parts to train (default decoder prompt_encoder; image_encoder is for a GPU; neck, the "
                           "encoder's last module, and last_stage, its last TinyViT stage, train on a CPU from "
                           "features cached once per slice)")
    tune.add_argument("--train-prompts", nargs="+", metavar="NAME[@WEIGHT]",
                      help="prompts drawn in training (default: samhw.train.TRAIN_MIX, boxes, single points and "
                           "points with a negative, see README 'Fine-tuning')")
    tune.add_argument("--val-prompts", nargs="+", help="prompts of the validation score (default: samhw.train.VAL_PROMPTS)")
    tune.add_argument("--augment", nargs="+", choices=["flip", "gamma"],
                      help="augment training slices, each with probability 1/2: flip left-right, or one gamma "
                           "(contrast) per slice; every variant is encoded once into the cache (2 variants a slice "
                           "for one, 4 for both: that many times the encoding and the cache's disk; default none)")
    tune.add_argument("--loss", choices=["dice_bce", "focal_dice"],
                      help="mask loss: Dice + BCE (default) or SAM's 20 x focal + Dice")
    tune.add_argument("--batch-size", type=_positive_int, default=8)
    tune.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 3e-4)")
    tune.add_argument("--weight-decay", type=float, default=0.01)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--limit", type=_positive_int, help="only N train slices (quick runs)")
    tune.add_argument("--val-limit", type=_positive_int, help="only N validation slices (quick runs)")
    tune.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    tune.add_argument("--cache", help="embedding cache folder (default: $SAMHW_CACHE, else ~/.cache/samhw)")
    tune.add_argument("--skip-bad", action="store_true", help="skip unreadable or inconsistent slices, counted")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    tune.set_defaults(func=_cmd_finetune)

    ship = sub.add_parser("export", help="ship a fine-tuning checkpoint's trained weights as samhw/weights/NAME "
                          "(safetensors and a JSON sidecar), loadable with --model NAME")
    ship.add_argument("checkpoint", help="best.pt of a finetune run")
    ship.add_argument("--name", default="litemedsam-lgg", help="model name (default litemedsam-lgg)")
    ship.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"], help="stored precision (default fp16)")
    ship.add_argument("--results", default="results/litemedsam-finetuned",
                      help="study folder whose test scores go into the sidecar if it studied these weights "
                           "(default results/litemedsam-finetuned)")
    ship.add_argument("--replace", action="store_true", help="overwrite a shipped file of other weights")
    ship.set_defaults(func=_cmd_export)

    split = sub.add_parser("split", help="list each patient's split (the rule is in data/README.md)")
    split.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    split.add_argument("--write", help="write the CSV here (e.g. data/split.csv)")
    split.set_defaults(func=_cmd_split)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (a ``timeout`` wrapper, a scheduler, a closed notebook kernel)."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def _storage_option(err, args: argparse.Namespace) -> str:
    """The option that chooses the folder of a failed write: ``--cache``, else ``--out`` (if the command has it)."""
    from .cache import default_cache_dir

    cache = Path(args.cache).expanduser() if getattr(args, "cache", None) else default_cache_dir()
    if Path(err.path).resolve().is_relative_to(cache.resolve()):
        return " with --cache"
    return " with --out" if hasattr(args, "out") else ""


def _say_shipped(args: argparse.Namespace) -> None:
    """One line on stderr for each shipped model named by the options: where its weights came from."""
    from .shipped import is_shipped, origin, sidecar

    for value in {getattr(args, k, None) for k in ("model", "checkpoint", "finetuned")} - {None}:
        if args.command != "export" and is_shipped(value):
            print(origin(sidecar(value)), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors the user can fix are one ``error:`` line and exit code 2, Ctrl-C and
    SIGTERM stop it (exit codes 130 and 143) keeping what is finished."""
    from .bench import BenchError
    from .data import DataError
    from .fileio import StorageError
    from .models import ModelError
    from .prompts import EmptyMaskError, PromptError
    from .study import StudyError
    from .train import FinetuneError
    from .workers import WorkerError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        _say_shipped(args)
        args.func(args)
    except (DataError, ModelError, PromptError, EmptyMaskError, FinetuneError, BenchError, StudyError, WorkerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StorageError as err:
        print(f"error: {err}{_storage_option(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        how = "terminated" if isinstance(err, _Terminated) else "interrupted"
        print(f"\n{how}: finished slices are kept; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(err, _Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
