"""What the notebooks under ``notebooks/`` call to find things and compute live: where the
checkout, the data and the study's results are; the committed results folders loaded as tables;
live experiments on a few slices with the study's own code; running the notebooks themselves.

The notebooks stay thin: a code cell calls one function here, in :mod:`samhw.analysis` (tables),
:mod:`samhw.architecture` (SAM's parts traced), :mod:`samhw.plots` or :mod:`samhw.widgets`, and the
logic is tested in ``tests/``. Nothing in the core imports this module.

``python -m samhw.notebook execute`` pairs, executes and saves every notebook (see :func:`main`).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .architecture import all_masks
from .data import DataError, Dataset, load_dataset, resolve_data_dir
from .metrics import iou
from .prompts import PromptSpec, Target, parse_prompts
from .report import leak_sentences

__all__ = [
    "DATA_HELP", "QUICK_STUDY", "FULL_STUDY", "NOTEBOOK_EXTRA", "import_extra",
    "setup", "repo_root", "find_data", "results_dir", "StudyResults", "load_results", "combined_rows", "combined_summary",
    "LIVE_MODELS", "live_model", "live_models", "describe_models", "live_slices", "run_prompts", "live_rows", "models_rows", "live_summary",
    "model_galleries", "per_model", "full_study", "full_studies", "multimask_table", "multimask_tables", "leak_passage", "main",
]

#: Where to get the data, shown whenever it cannot be found.
DATA_HELP = """\
The LGG MRI slices were not found. Get them once from Kaggle (dataset mateuszbuda/lgg-mri-segmentation,
free account; licence CC BY-NC-SA 4.0):
  * by hand: download the archive from https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation,
    unzip it and put its kaggle_3m folder at data/kaggle_3m in this checkout;
  * or with the Kaggle client (in Colab too): upload your kaggle.json API token, then
      pip install kaggle
      mkdir -p ~/.kaggle && cp kaggle.json ~/.kaggle/ && chmod 600 ~/.kaggle/kaggle.json
      kaggle datasets download -d mateuszbuda/lgg-mri-segmentation
      unzip -q lgg-mri-segmentation.zip -d data/lgg
    and point SAMHW_DATA at data/lgg/kaggle_3m (os.environ["SAMHW_DATA"] = "..." in a notebook).
Then run this cell again."""


#: The commands that write the results folders the notebooks read.
QUICK_STUDY = "python -m samhw study --splits train test --limit 8 --seeds 2"
FULL_STUDY = "python -m samhw study --splits train test"


# ----------------------------------------------------------------------------- environment


#: The packages of samhw's ``notebook`` extra (pyproject.toml): the notebooks' widgets need them, the
#: library and the command line do not.
NOTEBOOK_EXTRA = ("ipywidgets", "anywidget")


def import_extra(name: str):
    """Import a package of the ``notebook`` extra (or one that comes with it, e.g. ``traitlets``);
    raise ``ModuleNotFoundError`` naming the install command where it is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"{name} is not installed: samhw's notebook widgets need the notebook extra, "
            "pip install -e '.[notebook]' in the checkout (make install has it; in Colab the notebooks' first cell "
            "installs it)", name=name) from err


def setup() -> None:
    """Once per notebook: quiet third-party warnings, figures at 80 dpi (the executed notebooks are
    committed: smaller images), and in Colab the widget manager that ipywidgets 8 needs."""
    import matplotlib

    matplotlib.rcParams["figure.dpi"] = 80
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"timm\..*")
    if "google.colab" in sys.modules:
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()


def repo_root() -> Path:
    """The checkout: the folder above the ``samhw`` package if it holds ``pyproject.toml``, else the
    nearest such folder above the working directory, else the working directory."""
    here = Path(__file__).resolve().parents[1]
    cwd = Path.cwd().resolve()
    for candidate in (here, cwd, *cwd.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "samhw").is_dir():
            return candidate
    return cwd


def find_data(data: str | os.PathLike | None = None) -> Path:
    """The ``kaggle_3m`` folder: ``data`` if given, else ``$SAMHW_DATA``, else ``data/kaggle_3m`` in
    the checkout, else a ``shared/datasets/lgg/kaggle_3m`` beside a folder above it. Raises
    :class:`DataError` with the download instructions (:data:`DATA_HELP`) if there is none."""
    root = repo_root()
    candidates = [data, os.environ.get("SAMHW_DATA"), root / "data" / "kaggle_3m"]
    candidates += [p / "shared" / "datasets" / "lgg" / "kaggle_3m" for p in root.parents]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_dir():
            return resolve_data_dir(Path(candidate).expanduser())
    raise DataError(data or os.environ.get("SAMHW_DATA") or root / "data" / "kaggle_3m", "no data here.\n" + DATA_HELP)


def results_dir() -> Path:
    """The checkout's ``results`` folder (the study's committed results, as :func:`load_results` reads them)."""
    return repo_root() / "results"


# ----------------------------------------------------------------------------- committed results


@dataclass
class StudyResults:
    """One folder written by ``python -m samhw study``: its summary, metadata and rows."""

    name: str
    folder: Path
    meta: dict
    summary: pd.DataFrame

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.summary["split"]))

    @property
    def command(self) -> str:
        return self.meta.get("command") or "python -m samhw study"

    def rows(self) -> pd.DataFrame:
        """Every (slice, prompt, seed) row of every split, with a ``model`` column."""
        from .evaluate import read_rows

        frames = [read_rows(self.folder / f"rows_{s}.csv") for s in self.splits
                  if (self.folder / f"rows_{s}.csv").is_file()]
        if not frames:  # a folder of summaries only
            return pd.DataFrame(columns=["model"])
        rows = pd.concat(frames, ignore_index=True)
        rows.insert(0, "model", self.name)
        return rows

    def describe(self) -> str:
        try:
            where = self.folder.relative_to(repo_root()).as_posix()
        except ValueError:
            where = self.folder.as_posix()
        splits = "; ".join(f"{s} {v['slices']} slices of {v['patients']} patients, made by "
                           f"`{v.get('command') or self.command}` ({v.get('elapsed_s', self.meta.get('elapsed_s', 0)):.0f} s)"
                           for s, v in self.meta.get("splits", {}).items())
        return f"{where}/: model {self.meta.get('model')}, seeds {self.meta.get('seeds')}, on {self.meta.get('device')}: {splits}"


def _missing(root: Path) -> str:
    return (f"No study results under {root.name}/ yet: the tables and figures below need them. Make them with\n"
            f"    {FULL_STUDY}\n(writes results/litemedsam/; add --limit 8 --seeds 2 for a quick look), then rerun "
            "this notebook. A fine-tuned model's results (results/<name>-finetuned/) come from `python -m samhw "
            "finetune` and then `python -m samhw study --finetuned runs/<name>-finetuned/best.pt`.")


def load_results(folder: str | os.PathLike | None = None, verbose: bool = True) -> list[StudyResults]:
    """Every results folder (``<folder>/<name>/summary.csv``, default :func:`results_dir`), the pretrained
    model first. Prints what was found and the command that made it, or how to make it."""
    root = Path(folder) if folder is not None else results_dir()
    found = []
    for summary in sorted(root.glob("*/summary.csv")) if root.is_dir() else []:
        meta_file = summary.with_name("summary.json")
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        table = pd.read_csv(summary)
        table.insert(0, "model", summary.parent.name)
        found.append(StudyResults(summary.parent.name, summary.parent, meta, table))
    found.sort(key=lambda r: (r.name != "litemedsam", r.name))
    if verbose:
        print("\n".join(r.describe() for r in found) if found else _missing(root))
        for r in found:
            if not {"train", "test"} <= set(r.splits):
                missing = " ".join(s for s in ("train", "test") if s not in r.splits)
                print(f"{r.name}: splits {', '.join(r.splits)} only; `python -m samhw study --splits {missing}` "
                      f"adds {missing} to {r.folder.name}/.")
        if found and len(found) == 1:
            print("Only the pretrained model so far: `python -m samhw finetune`, then `python -m samhw study "
                  "--splits test train --finetuned runs/litemedsam-finetuned/best.pt` adds the fine-tuned one.")
    return found


def combined_rows(results: Sequence[StudyResults]) -> pd.DataFrame:
    """The rows of several results folders in one table (``model`` column = folder name)."""
    if not results:
        return pd.DataFrame()
    return pd.concat([r.rows() for r in results], ignore_index=True)


def combined_summary(results: Sequence[StudyResults]) -> pd.DataFrame:
    """The summaries of several results folders in one table (``model`` column = folder name)."""
    if not results:
        return pd.DataFrame()
    return pd.concat([r.summary for r in results], ignore_index=True)


# ----------------------------------------------------------------------------- live computation


#: The models of notebooks 02-04's live cells: a label (the ``model`` column of their rows, named as
#: :func:`samhw.models.load_model` names the model) -> ``(name, checkpoint)``: the pretrained
#: LiteMedSAM and the fine-tuned model that ships in ``samhw/weights``.
LIVE_MODELS: dict[str, tuple[str, str | None]] = {"litemedsam": ("litemedsam", None),
                                                  "litemedsam-lgg": ("litemedsam-lgg", None)}


def live_model(name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto", cache: str | None = None):
    """``(model, embedding cache)``: the model loaded strictly, the cache at ``cache`` or the default
    (``$SAMHW_CACHE``, else ``~/.cache/samhw``)."""
    from .cache import EmbeddingCache
    from .models import load_model

    setup()
    model = load_model(name, checkpoint, device)
    return model, EmbeddingCache(model, cache)


def live_models(models: Mapping[str, tuple[str, str | None]] | None = None, device: str = "auto",
                cache: str | None = None) -> dict[str, tuple]:
    """``label -> (model, embedding cache)``: :func:`live_model` of each ``(name, checkpoint)`` of
    ``models`` (default :data:`LIVE_MODELS`). Each model gets its own cache, whose folder is keyed by
    its image encoder: models that share their encoder (a fine-tuned decoder) share the embeddings."""
    return {label: live_model(name, checkpoint, device, cache)
            for label, (name, checkpoint) in (LIVE_MODELS if models is None else models).items()}


def describe_models(models: Mapping[str, tuple]) -> str:
    """One line per model (``label -> (model, cache)``): a shipped model's origin (its sidecar's
    summary: the run, the validation and test scores), else the model and its weights file's name."""
    lines = []
    for label, (model, _) in models.items():
        what = model.meta.get("origin")
        if not what:
            what = f"{model.name} with " + (f"the weights of {Path(model.checkpoint).name}" if model.checkpoint
                                            else "its default weights")
        lines.append(what if what.startswith(f"{label}: ") else f"{label}: {what}")
    return "\n".join(lines)


def live_slices(split: str = "test", n: int | None = 6, data: str | None = None) -> Dataset:
    """``n`` tumor slices of ``split`` spread evenly over its patients (all of them if ``n`` is None)."""
    return load_dataset(find_data(data), split, limit=n)


def run_prompts(model, cache, dataset: Dataset, prompts: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Rows like the study's (one per slice, prompt and seed) for a few slices, computed here with
    the study's own :func:`samhw.evaluate.evaluate_slice`, quietly (no progress bars or cache
    messages, so that the notebooks' outputs stay reproducible)."""
    from .evaluate import evaluate_slice, plan

    pairs = plan(parse_prompts(list(prompts)), list(seeds))
    rows = [row for item in dataset.slices
            for row in evaluate_slice(model, cache.get(item.image), item, pairs, dataset.split)]
    return pd.DataFrame(rows)


def live_rows(model, cache, datasets: dict[str, Dataset], prompts: Sequence[str], seeds: Sequence[int],
              label: str = "live") -> pd.DataFrame:
    """:func:`run_prompts` on each split's slices, in one table with a ``model`` column (``label``)."""
    rows = pd.concat([run_prompts(model, cache, ds, prompts, seeds) for ds in datasets.values()], ignore_index=True)
    rows.insert(0, "model", label)
    return rows


def models_rows(models: Mapping[str, tuple], datasets: dict[str, Dataset], prompts: Sequence[str],
                seeds: Sequence[int]) -> pd.DataFrame:
    """:func:`live_rows` of each model (``label -> (model, cache)``, :func:`live_models`) on the same
    slices, prompts and seeds, in one table whose ``model`` column is the label."""
    return pd.concat([live_rows(model, cache, datasets, prompts, seeds, label=label)
                      for label, (model, cache) in models.items()], ignore_index=True)


def model_galleries(models: Mapping[str, tuple], slices: Sequence, prompts: Sequence[str],
                    seed: int = 0) -> dict[str, list[list[dict]]]:
    """``label -> samhw.study.predict_gallery`` of each model on the same slices and prompts (the
    same draws: a prompt's draw depends on the seed and the slice only), for
    :func:`samhw.tuning.before_after`."""
    from .study import predict_gallery

    return {label: predict_gallery(model, cache, slices, prompts, seed) for label, (model, cache) in models.items()}


def per_model(table: pd.DataFrame, function: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """``function`` applied to each model's rows of ``table`` (its ``model`` column dropped), the
    results in one table with the ``model`` column first, the models in their order in ``table``."""
    parts = []
    for name, group in table.groupby("model", sort=False):
        part = function(group.drop(columns="model").reset_index(drop=True))
        part.insert(0, "model", name)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def live_summary(rows: pd.DataFrame, model: str = "live") -> pd.DataFrame:
    """The study's summary of live rows, with a ``model`` column (the rows' own, else ``model``),
    each model summarised on its own."""
    from .evaluate import summarize

    if "model" not in rows:
        rows = rows.assign(model=model)
    parts = []
    for name, group in rows.groupby("model", sort=False):
        summary = summarize(group.drop(columns="model"))
        summary.insert(0, "model", name)
        parts.append(summary)
    return pd.concat(parts, ignore_index=True)


def full_study(model: str = "litemedsam", checkpoint: str | None = None, experiments: Sequence[str] = ("E1", "E2", "E3"),
               seeds: int = 3, out: str | os.PathLike | None = None, limit: int | None = None) -> list[StudyResults]:
    """The notebooks' ``FULL = True`` path: run the study here on every slice of train and test
    (``limit`` slices per split for a try) into
    ``runs/notebook/<model>`` (for a checkpoint, its folder's name, e.g. ``litemedsam-finetuned``,
    prefixed with the model's where it lacks it) and load it like committed results."""
    from .study import StudyConfig, run_study

    name = model
    if checkpoint is not None:
        folder = Path(checkpoint).resolve().parent.name
        name = folder if folder.startswith(model) else f"{model}-{folder}"
    out = Path(out) if out is not None else repo_root() / "runs" / "notebook" / name
    run_study(StudyConfig(out, data=str(find_data()), splits=("train", "test"), model=model, checkpoint=checkpoint,
                          seeds=seeds, experiments=experiments, limit=limit,
                          command=f"samhw.notebook.full_study({model!r}, {checkpoint!r}, experiments={list(experiments)}, "
                                  f"seeds={seeds}, limit={limit})"))
    return [r for r in load_results(out.parent, verbose=True) if r.name == out.name]


def full_studies(models: Mapping[str, tuple[str, str | None]] | None = None,
                 experiments: Sequence[str] = ("E1", "E2", "E3"), **options) -> list[StudyResults]:
    """:func:`full_study` of each ``(name, checkpoint)`` of ``models`` (default :data:`LIVE_MODELS`),
    their results in one list: the ``FULL = True`` path of notebooks that run several models live."""
    return [found for name, checkpoint in (LIVE_MODELS if models is None else models).values()
            for found in full_study(name, checkpoint, experiments=experiments, **options)]


def multimask_table(model, cache, dataset: Dataset, prompt: str = "center_gaussian", seed: int = 0) -> pd.DataFrame:
    """For one point prompt on each slice: the IoU of the three multimask outputs and of the single
    output, which one the predicted IoU picks, and the best one (an oracle that knows the truth)."""
    spec = PromptSpec.parse(prompt)
    out = []
    for item in dataset.slices:
        drawn = spec.draw(Target(item.mask, item.image, item.slice_id), seed)
        masks, scores = all_masks(model, cache.get(item.image), drawn, item.mask.shape)
        ious = np.array([iou(m, item.mask) for m in masks])
        chosen = 1 + int(np.argmax(scores[1:]))
        oracle = 1 + int(np.argmax(ious[1:]))
        out.append({"slice": item.slice_id, "area": int(item.mask.sum()),
                    **{f"IoU {k}": round(ious[k], 3) for k in (1, 2, 3)},
                    **{f"pred {k}": round(float(scores[k]), 3) for k in (1, 2, 3)},
                    "chosen": chosen, "best": oracle, "IoU chosen": round(ious[chosen], 3),
                    "IoU best": round(ious[oracle], 3), "IoU single": round(ious[0], 3)})
    return pd.DataFrame(out)


def multimask_tables(models: Mapping[str, tuple], dataset: Dataset, prompt: str = "center_gaussian",
                     seed: int = 0) -> pd.DataFrame:
    """:func:`multimask_table` of each model (``label -> (model, cache)``) on the same slices, in one
    table with a ``model`` column first (:func:`per_model` summarises it per model)."""
    tables = []
    for label, (model, cache) in models.items():
        table = multimask_table(model, cache, dataset, prompt, seed)
        table.insert(0, "model", label)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def leak_passage(rows: pd.DataFrame, split: str = "test") -> str:
    """E6 in words for rows of one or more models (``model`` column, the pretrained model first):
    :func:`samhw.report.leak_sentences`; "not run" while a model has no ``background_far`` rows."""
    models = {m: m for m in dict.fromkeys(rows["model"])} if len(rows) else {}
    if not models:
        return "E6: no results loaded."
    return leak_sentences(rows, split, models)


# ----------------------------------------------------------------------------- executing the notebooks


def main(argv: list[str] | None = None) -> int:
    """``python -m samhw.notebook execute [notebooks/NAME.py ...]``: for each notebook (default: all
    of ``notebooks/[0-9]*.py``) update the ``.ipynb`` from its ``.py`` (``jupytext --sync``), run it
    top to bottom in a fresh kernel whose working directory is ``notebooks/``, and save it with its
    outputs: the executed notebooks that ``pytest --nbval notebooks/`` checks."""
    import argparse
    import subprocess

    parser = argparse.ArgumentParser(prog="python -m samhw.notebook")
    parser.add_argument("command", choices=["execute"])
    parser.add_argument("notebooks", nargs="*", help="notebooks/*.py sources (default: all)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient

    sources = [Path(p).resolve().with_suffix(".py") for p in args.notebooks] or sorted((repo_root() / "notebooks").glob("[0-9]*.py"))
    for source in sources:
        started = time.time()
        subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(source)], check=True)
        target = source.with_suffix(".ipynb")
        notebook = nbformat.read(target, as_version=4)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(source.parent.resolve())}}).execute()
        nbformat.write(notebook, target)
        print(f"executed {target} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
