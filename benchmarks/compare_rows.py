"""Two studies' rows of one split, paired per patient: for each prompt, the mean IoU over patients of
each, their difference with its patient-level 95% bootstrap interval, and the Wilcoxon p
(``samhw.stats.compare_prompts``). For a model that replaced another, the old rows come from git:

    git show b60606b:results/litemedsam-finetuned/rows_test.csv > /tmp/old_rows_test.csv
    python benchmarks/compare_rows.py results/litemedsam-finetuned/rows_test.csv /tmp/old_rows_test.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw import stats  # noqa: E402
from samhw.recipes import TEST_PROMPTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows_a", help="rows_<split>.csv of the first study (A)")
    parser.add_argument("rows_b", help="rows_<split>.csv of the second study (B), of the same slices")
    parser.add_argument("--prompts", nargs="+", default=[*TEST_PROMPTS, "background", "background_far",
                                                         "center_gaussian+background_far"])
    args = parser.parse_args()
    a, b = stats.read_rows(args.rows_a), stats.read_rows(args.rows_b)
    print("| prompt | A (patients) | B (patients) | A - B [95% patient interval] | Wilcoxon p | patients A wins |")
    print("|---|---|---|---|---|---|")
    for prompt in args.prompts:
        c = stats.compare_prompts(stats.slice_values(a[a.prompt == prompt]), stats.slice_values(b[b.prompt == prompt]))
        print(f"| `{prompt}` | {c.mean_a:.3f} | {c.mean_b:.3f} | {stats.format_interval(c.diff, bounds=(c.lo, c.hi), signed=True)} "
              f"| {stats.format_p(c.p)} | {c.a_wins} of {c.patients} |")


if __name__ == "__main__":
    main()
