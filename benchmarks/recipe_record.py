"""A fine-tuning recipe's committed record, with its test-split scores.

Evaluates a run's weights (its ``best.pt``, or a shipped model's name) on the test split with the
prompts of :data:`samhw.recipes.TEST_PROMPTS` (3 seeds), and writes the record
``results/finetune-recipes/<name>.json``: the run's ``log.json`` (options, command, split and every
epoch's validation scores) with a ``test`` block (mean IoU over slices and its patient-level 95%
bootstrap interval per prompt, and this command). Without ``--log`` the test block is added to the
existing record. Recipes are chosen on validation; the test block only reports.

    python benchmarks/recipe_record.py NAME --weights RUN/best.pt --log RUN/log.json [--note TEXT]
    python benchmarks/recipe_record.py NAME --weights litemedsam-lgg
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw.cache import EmbeddingCache  # noqa: E402
from samhw.data import load_dataset  # noqa: E402
from samhw.evaluate import evaluate_to_csv, run_config  # noqa: E402
from samhw.fileio import atomic_write_text  # noqa: E402
from samhw.models import load_model  # noqa: E402
from samhw.prompts import parse_prompts  # noqa: E402
from samhw.recipes import TEST_PROMPTS, test_scores  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "results" / "finetune-recipes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the record's name: results/finetune-recipes/NAME.json")
    parser.add_argument("--weights", required=True, help="the run's best.pt, or a shipped model's name")
    parser.add_argument("--log", help="the run's log.json (a new record); without it, the record exists")
    parser.add_argument("--note", help="what the record should say besides the numbers (e.g. why it stopped)")
    parser.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    parser.add_argument("--rows", help="where the test rows go (default: beside the weights, else /tmp)")
    args = parser.parse_args()
    path = RECIPES / f"{args.name}.json"
    record = json.loads(Path(args.log).read_text()) if args.log else json.loads(path.read_text())
    if args.note:
        record["note"] = args.note
    model = load_model(record["options"]["model"], args.weights, "auto")
    trained_with = model.meta.get("options")
    if args.log and trained_with != record["options"]:
        raise SystemExit(f"error: {args.weights} was not trained by the run of {args.log} (other options); "
                         "pass that run's best.pt")
    dataset = load_dataset(args.data, "test")
    specs, seeds = parse_prompts(list(TEST_PROMPTS)), [0, 1, 2]
    weights = Path(args.weights)
    rows_path = Path(args.rows) if args.rows else (weights.parent if weights.is_file() else Path("/tmp")) / f"test_rows_{args.name}.csv"
    rows = evaluate_to_csv(rows_path, run_config(model, dataset, specs, seeds), model, EmbeddingCache(model), dataset,
                           specs, seeds, progress=False)
    shown = [a if not Path(a).is_absolute() else str(Path(*Path(a).parts[-2:])) for a in sys.argv[1:]]  # RUN/best.pt
    record["test"] = {"command": "python benchmarks/recipe_record.py " + shlex.join(shown),
                      "weights_sha256": model.fingerprint(), "slices": len(dataset), "seeds": len(seeds),
                      "iou": test_scores(rows)}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    print(f"{path}: " + ", ".join(f"{p} {v[0]:.3f}" for p, v in record["test"]["iou"].items()))


if __name__ == "__main__":
    main()
