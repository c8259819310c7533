# %% [markdown]
# # 05 · Fine-tuning LiteMedSAM on the LGG slices (E4)
#
# The report fine-tuned SAM on its training slices and prompted it again (its Table I, "finetuned"
# columns). Here the same step (SPEC.md, E4), on the train split's patients, selected on the
# validation patients, never on the test split: what is trained and what stays frozen, what a
# training batch looks like, the loss it gets, a short run live on the CPU, the committed run's
# curves, and the fine-tuned model that ships with samhw (`--model litemedsam-lgg`) against the
# pretrained one on the same prompts.
#
# `python -m samhw finetune` runs the real recipe (see the parameters cell for `FULL = True`).

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
import json

import pandas as pd

from samhw import notebook, plots, study, train, tuning, widgets
from samhw.cache import EmbeddingCache
from samhw.recipes import started_from

notebook.setup()

# %% [markdown]
# ## Parameters
# `FULL = True` runs the real recipe here, into `runs/notebook/litemedsam-finetuned/`: every train
# slice, the default prompt mix, `EPOCHS` epochs (2 cores: about 3 minutes an epoch for the decoder
# and the prompt encoder, once the embeddings are cached). On a GPU in Colab:
#
# 1. *Runtime > Change runtime type > GPU*, then run the setup cell above (upload the repository zip first);
# 2. get the data (notebook 02 shows the Kaggle commands) and set `SAMHW_DATA`;
# 3. set `FULL = True`; on a GPU the image encoder can train too: `PARTS = ("decoder", "prompt_encoder", "image_encoder")`
#    (the embeddings then change every step, so nothing is cached: minutes an epoch on a T4);
# 4. run all cells. Then compare it on every slice and ship it, in a terminal:
#    `python -m samhw study --splits test train --finetuned runs/notebook/litemedsam-finetuned/best.pt` and
#    `python -m samhw export runs/notebook/litemedsam-finetuned/best.pt --name litemedsam-lgg --replace`
#    (replace the shipped file only with a better model, judged on the validation patients).

# %% tags=["parameters"]
FULL = False
PARTS = ("decoder", "prompt_encoder")  # any of train.PARTS: also neck, last_stage (from cached features), image_encoder (a GPU)
EPOCHS = 10                            # of the FULL run
MINI_SLICES, MINI_VAL, MINI_EPOCHS = 16, 4, 3  # the live mini-run: train slices, validation slices, epochs
SHIPPED = "litemedsam-lgg"             # the fine-tuned model shipped in samhw/weights

# %% [markdown]
# ## What is trained, what is frozen
# LiteMedSAM has SAM's three parts: a TinyViT image encoder (one 64x64x256 embedding per slice), the
# prompt encoder (points and boxes to tokens; the mask input's convolutions are unused here) and the
# mask decoder (a two-way transformer and SAM's three masks with their predicted IoU). The default
# recipe trains the prompt encoder and the decoder and freezes the encoder, so each slice is encoded
# once and its embedding cached: a step then runs only the small parts, fast on a CPU.

# %%
model, cache = notebook.live_model("litemedsam", device="cpu")
tuning.trainable_table(model, PARTS)

# %% [markdown]
# ## The prompt mix, and one real batch
# Each slice gets one prompt per epoch, drawn from the mix below (boxes with random margins; one
# foreground point by each of the study's strategies; in a small share, a foreground point with a
# negative one, mostly a far `background_far` point and a third of them the tight box's corner), from
# generators of (seed, epoch, slice): the same on every machine and in every rerun. A point gets SAM's
# three masks (its answer to an ambiguous prompt), a box one.

# %%
config = train.FinetuneConfig(parts=PARTS)
tuning.mix_table(config)

# %% [markdown]
# The first step of the first epoch of the real run: the slices it picks from the train split and
# the prompt each one gets.

# %%
train_set = notebook.live_slices("train", None)
batch = tuning.draw_batch(config, train_set, epoch=0, step=0)
fig = tuning.batch_figure(batch)

# %% [markdown]
# ## The loss of that batch
# For each prompt the model makes K masks (K = 3 for a point, 1 for a box). Each mask k gets a
# Dice loss, 1 - (2·Σ p·t + 1) / (Σ p + Σ t + 1) with p the sigmoid of its logits and t the truth, and
# a binary cross-entropy (mean over the 256x256 pixels); the **mask loss** is Dice + BCE of the
# best-fitting mask only (SAM's rule: the other two may answer another reading of the prompt). The
# **IoU head** learns to predict each mask's actual IoU (logits > 0 against the truth): mean squared
# error over the K masks, weight 1. The batch's loss is the mean of the prompts' totals. The table is
# computed here by hand and checked against `samhw.train.prompt_loss` (the function training uses);
# the pretrained model on these prompts:

# %%
losses = tuning.loss_table(model, cache, batch)
losses

# %% [markdown]
# The pretrained LiteMedSAM was trained for boxes; its masks for points are near empty (Dice loss
# near 1). Boxes against prompts of points alone, in this batch:

# %%
per_prompt = losses.drop(index="batch mean")
boxes = per_prompt["prompt"].str.startswith("box")
print(f"mean loss: boxes {per_prompt[boxes]['loss'].mean():.3f} over {int(boxes.sum())} prompts, "
      f"points {per_prompt[~boxes]['loss'].mean():.3f} over {int((~boxes).sum())}")

# %% [markdown]
# ## A mini-run, live on the CPU
# The real `finetune`, shortened: `MINI_SLICES` train slices, `MINI_VAL` validation slices, and no
# warm-up so that a few steps show. Validation IoU is the mean over the validation prompts
# (`train.VAL_PROMPTS`: box:0, box:20, random_gaussian, center_gaussian,
# center_gaussian+background_far; seed 0). Far too little data to be a model: this shows the machinery moving, nothing more (on a
# handful of slices the validation IoU may as well fall as rise).

# %%
mini = train.FinetuneConfig(parts=PARTS, epochs=MINI_EPOCHS, batch_size=4, lr=3e-4, warmup_steps=0,
                            limit=MINI_SLICES, val_limit=MINI_VAL)
before = tuning.validation_iou(model, cache, notebook.live_slices("val", MINI_VAL), mini.val_prompts)
log = tuning.mini_run(mini, notebook.repo_root() / "runs" / "notebook" / "05-mini", data=str(notebook.find_data()))
print(f"before training: validation IoU {before:.4f}")
for entry in log["epochs"]:
    print(f"epoch {entry['epoch']}: training loss {entry['loss']:.4f} (mask {entry['mask_loss']:.4f}, "
          f"IoU head {entry['iou_loss']:.4f}), validation IoU {entry['val_mean']:.4f}")
assert log["epochs"][-1]["loss"] != log["epochs"][0]["loss"], "the training loss did not move"
assert log["epochs"][-1]["val_mean"] != before, "validation IoU did not move"

# %% [markdown]
# ## The committed run
# The run behind `results/litemedsam-finetuned/` (its command first): training losses per epoch
# and validation IoU per prompt; the best epoch by mean validation IoU is the checkpoint kept.
# The shipped model took two runs: the decoder and prompt encoder first (flips, 20 epochs), then,
# from those weights (`--checkpoint litemedsam-lgg`), the image encoder's last stage and neck with
# them, trained from cached features before the last stage; this is the record of the second.
# With `FULL = True`, the run made here instead.

# %%
if FULL:
    full = train.FinetuneConfig(parts=PARTS, epochs=EPOCHS)
    out = notebook.repo_root() / "runs" / "notebook" / "litemedsam-finetuned"
    train.finetune(full, out, data=str(notebook.find_data()), resume=(out / "last.pt").exists(),
                   command="notebook 05 with FULL = True")
    record = json.loads((out / "log.json").read_text())
else:
    record = json.loads((notebook.results_dir() / "litemedsam-finetuned" / "training.json").read_text())
start = started_from(record)
start = f"{start['checkpoint']} (weights sha256 {start['weights_sha256'][:12]})" if start else "the base weights"
print(f"`{record['command']}`: started from {start}, "
      f"best epoch {record['best']['epoch']} of {len(record['epochs'])}, mean validation IoU {record['best']['val_mean']:.4f}")
fig = plots.training_curves(record["epochs"])

# %% [markdown]
# ## Pretrained against shipped, on the same prompts
# `load_model("litemedsam-lgg")` (or `--model litemedsam-lgg` on the command line) loads LiteMedSAM
# with the fine-tuned weights of `samhw/weights/litemedsam-lgg.safetensors` on top, offline, after
# checking the file's sha256 against its sidecar `litemedsam-lgg.json`, which records the command,
# the split, the validation score and the test scores. The same prompts (seed 0) on three test slices:

# %%
tuned, origin = tuning.load_shipped(SHIPPED)
print(origin)
if tuned is not None:  # its own embeddings: a model that trained part of the image encoder embeds anew
    tuned_cache = EmbeddingCache(tuned, cache.root)
    print("trained parts:", ", ".join(tuned.meta["trained"]))
test_set = notebook.live_slices("test", 8)
prompts = ["box:0", "box:20", "center_gaussian", "random_gaussian", "center_gaussian+background"]
if tuned is not None:
    shown = study.gallery_slices(test_set, 3)
    fig = tuning.before_after({"pretrained": study.predict_gallery(model, cache, shown, prompts),
                               "shipped": study.predict_gallery(tuned, tuned_cache, shown, prompts)})

# %% [markdown]
# Mean IoU of each prompt on 8 test slices (seed 0), both models (the study has every slice,
# with intervals: `results/litemedsam-finetuned/comparison.md`):

# %%
if tuned is not None:
    rows = {label: notebook.run_prompts(m, c, test_set, prompts, [0]) for label, m, c in
            (("pretrained", model, cache), ("shipped", tuned, tuned_cache))}
    comparison = pd.DataFrame({label: r.groupby("prompt", sort=False)["iou"].mean() for label, r in rows.items()}).round(3)
else:
    comparison = None
comparison

# %% [markdown]
# ## Try it: pretrained and fine-tuned side by side
# Pick a test slice, a prompt and a seed: the prompt is drawn once and decoded by both models, each
# from its own image encoder's cached embedding of the slice. Without shipped weights in this copy, the
# right-hand model is the mini-run's above (16 slices: a machinery check, not a model).

# %%
if tuned is None:
    mini_run = notebook.repo_root() / "runs" / "notebook" / "05-mini" / "best.pt"
    (tuned, tuned_cache), right = notebook.live_model("litemedsam", str(mini_run), "cpu", str(cache.root)), "mini-run"
else:
    right = "shipped"
explorer = widgets.CompareExplorer({"pretrained": (model, cache), right: (tuned, tuned_cache)}, test_set,
                                   prompts=[*prompts, "center_mask", "random_mask", "box:10", "box:-10"],
                                   prompt="center_gaussian", slice_index=3)
explorer

# %%
explorer.prompt.value = "random_gaussian"  # what choosing a prompt does
print(explorer.summary())
