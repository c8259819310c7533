"""Command line: ``python -m samhw {study,evaluate,report,split} ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    parser.add_argument("--model", default="litemedsam", help="litemedsam (default), vit_b, vit_l or vit_h")
    parser.add_argument("--checkpoint", help="weights: an official SAM checkpoint or one written by samhw finetune")
    parser.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds for random prompts (default 3)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--cache", help="embedding cache folder (default: $SAMHW_CACHE, else ~/.cache/samhw)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or inconsistent slices, counting and listing them, instead of stopping")
    parser.add_argument("--limit", type=_positive_int, help="only N tumor slices of each split, evenly spread over its patients (quick runs)")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="prompts of one slice decoded together (default: 1 on CPU, 64 on CUDA)")
    parser.add_argument("--workers", type=_positive_int,
                        help="processes sharing the slices on the CPU, one thread each (default: one per core, up to 8)")
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
    rows = evaluate_to_csv(out, run_config(model, dataset, specs, seeds), model, EmbeddingCache(model, args.cache), dataset, specs, seeds,
                           batch_size=args.batch_size, progress=not args.quiet, workers=args.workers)
    print(format_summary(summarize(rows)))
    if dataset.skipped:
        print(f"\nSKIPPED {len(dataset.skipped)} bad slices; see the list above", file=sys.stderr)
    print(f"\nwrote {len(rows)} rows to {out}")


def _cmd_study(args: argparse.Namespace) -> None:
    from .report import update_readme
    from .study import run_study

    out = args.out or f"results/{args.model}"
    run_study(out, data=args.data, splits=args.splits, model_name=args.model, checkpoint=args.checkpoint,
              seeds=args.seeds, device=args.device, cache_dir=args.cache, skip_bad=args.skip_bad, limit=args.limit,
              batch_size=args.batch_size, progress=not args.quiet, experiments=args.experiments, plain=args.plain,
              workers=args.workers,
              command="python -m samhw " + " ".join(args.argv))
    if args.readme:
        changed = update_readme(args.readme, out)
        print(f"{'updated' if changed else 'unchanged'}: results table in {args.readme}")


def _cmd_report(args: argparse.Namespace) -> None:
    from .report import results_markdown, update_readme

    if args.readme:
        changed = update_readme(args.readme, args.results)
        print(f"{'updated' if changed else 'unchanged'}: results table in {args.readme}")
    else:
        print(results_markdown(args.results))


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
        Path(args.write).write_text(text)
        print(f"wrote {len(patients)} patients to {args.write}")
    else:
        print(text, end="")
    totals: dict[str, list[int]] = {}
    for p, n in patients.items():
        t = totals.setdefault(split_of(p), [0, 0])
        t[0] += 1
        t[1] += n
    print("; ".join(f"{s}: {t[0]} patients, {t[1]} slices" for s, t in sorted(totals.items())), file=sys.stderr)


def _cmd_bench(args: argparse.Namespace) -> None:
    import re

    import torch

    from .bench import run_bench
    from .data import discover, resolve_data_dir, split_of
    from .models import resolve_device

    device = resolve_device(args.device)
    if args.out:
        out = args.out
    elif device.type == "cuda":
        out = "results/bench/cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    else:
        out = f"results/bench/cpu-{os.cpu_count()}core"
    records, _ = discover(resolve_data_dir(args.data))
    in_split = sum(1 for r in records if args.split == "all" or split_of(r.patient) == args.split)
    run_bench(args.data, args.split, args.slices, args.seeds, str(device), args.model, args.checkpoint, args.repeat,
              out, full_split_slices=in_split)
    if args.readme:
        from .report import replace_block

        body = Path(out).with_suffix(".md").read_text().replace("# Benchmark", "#### Benchmark", 1).strip()
        body += f"\n\nMade by `python -m samhw {' '.join(args.argv)}`; files `{out}.json` and `{out}.md`."
        replace_block(args.readme, "<!-- bench:start -->", "<!-- bench:end -->", body)
        print(f"wrote the benchmark into {args.readme}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m samhw", description="Prompting and fine-tuning SAM on LGG brain MRI.")
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="the main job: experiments E1-E3, results and figures under results/")
    _common(study)
    study.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test", "all"],
                       help="splits to evaluate (default: test)")
    study.add_argument("--experiments", nargs="+", default=["E1", "E2", "E3"], choices=["E1", "E2", "E3"])
    study.add_argument("--out", help="results folder (default results/<model>)")
    study.add_argument("--readme", help="also rewrite the results table of this README")
    study.set_defaults(func=_cmd_study)

    evaluate = sub.add_parser("evaluate", help="evaluate chosen prompts; one CSV row per (prompt, seed, slice)")
    _common(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    evaluate.add_argument("--prompts", nargs="+", required=True,
                          help="strategy names or box:M, joined with + for combinations, e.g. box:0 box:-20 "
                               "center_gaussian center_mask+background random_gaussian:sigma=50")
    evaluate.add_argument("--out", help="CSV file (default runs/evaluate_<model>_<split>.csv)")
    evaluate.set_defaults(func=_cmd_evaluate)

    report = sub.add_parser("report", help="print a results folder as Markdown, or write it into the README")
    report.add_argument("results", help="a folder written by study, e.g. results/litemedsam")
    report.add_argument("--readme", help="rewrite the results block of this file")
    report.set_defaults(func=_cmd_report)

    bench = sub.add_parser("bench", help="time the plain eager path against samhw's path on the same slices")
    bench.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    bench.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    bench.add_argument("--slices", type=_positive_int, default=8, help="slices for the study subset (default 8)")
    bench.add_argument("--seeds", type=_positive_int, default=3)
    bench.add_argument("--model", default="litemedsam")
    bench.add_argument("--checkpoint")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--repeat", type=_positive_int, default=5, help="timed repetitions (median reported)")
    bench.add_argument("--out", help="results file stem (default results/bench/<device>)")
    bench.add_argument("--readme", help="also write the table into this README's bench block")
    bench.set_defaults(func=_cmd_bench)

    split = sub.add_parser("split", help="list each patient's split (the rule is in data/README.md)")
    split.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    split.add_argument("--write", help="write the CSV here (e.g. data/split.csv)")
    split.set_defaults(func=_cmd_split)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .models import ModelError
    from .prompts import EmptyMaskError, PromptError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except (DataError, ModelError, PromptError, EmptyMaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished slices are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
