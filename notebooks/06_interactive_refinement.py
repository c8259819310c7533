# %% [markdown]
# # 06 · Interactive refinement: correction clicks (E5), a click-to-segment widget, your own slice
#
# SAM is an interactive model: its tools are judged by how fast corrections reach a good mask. E5
# (SPEC.md) follows the protocol of the interactive segmentation literature (Xu et al. 2016, RITM,
# SAM's own evaluation): start from one prompt, then click where the prediction is most wrong.
#
# * **The click**: error regions FN = truth and not predicted, FP = predicted and not truth; the
#   larger (by pixels; FN on a tie) is corrected, at its pixel farthest from the region's boundary
#   (distance transform; the image border counts as boundary; ties to the first pixel in row-major
#   order), labelled 1 in FN and 0 in FP. No randomness after the first prompt.
# * **The decode**: each click is added to all earlier ones; the first output is the best of SAM's
#   three masks by predicted IoU for a lone point (the single mask for a box), later outputs single
#   masks; the previous low-resolution logits go in as `mask_input` (and a variant without).
# * **Counting**: k = correction clicks after the first prompt (k = 0: the first prompt alone).
#   NoC@t = the least k whose IoU reaches t, 20 when none does.

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
from pathlib import Path

import numpy as np
import pandas as pd

from samhw import Predictor, notebook, plots
from samhw.click_widget import ClickSegmenter
from samhw.interactive import trace_refinement
from samhw.refine import summary_table

notebook.setup()

# %% tags=["parameters"]
# Parameters: the model of the live part and the slices shown.
MODEL, CHECKPOINT = "litemedsam", None
LIVE_SLICES = 4
CLICKS = 9  # correction clicks shown click by click

# %% [markdown]
# ## The protocol, click by click
# One test slice, three starts: the literature's first click (`center_inside`, the mask pixel
# farthest from its boundary), the tight box, and the tight box again without `mask_input`. Yellow:
# the true outline; blue: the prediction; green stars and red crosses: positive and negative
# clicks; the newest click is ringed.

# %%
model, cache = notebook.live_model(MODEL, CHECKPOINT)
live = notebook.live_slices("test", LIVE_SLICES)
item = live.slices[2]
embedding = cache.get(item.image)
print(f"{item.slice_id}: tumor of {int(item.mask.sum())} px")

# %%
for start, with_mask in [("center_inside", True), ("box:0", True), ("box:0", False)]:
    steps = trace_refinement(model, embedding, item, start, mask_input=with_mask, max_clicks=CLICKS)
    fig = plots.refinement_steps(item.image, item.mask, steps)
    fig.suptitle(f"{start}, {'with' if with_mask else 'without'} mask_input", y=1.0)
    print(start, "mask_input" if with_mask else "no mask_input", "IoU by k:",
          " ".join(f"{s['iou']:.2f}" for s in steps))

# %% [markdown]
# ## E5 on the test split: the committed results
# Loaded from `results/<model>/e5_*.csv` (written by `python -m samhw refine`; `e5_rows_test.json`
# there says the command, the slices and the time). mIoU after k clicks and NoC@80/85/90, means over
# patients with 95% percentile-bootstrap intervals over patients (2000 resamples, fixed seed).

# %%
results = {}
for folder in sorted(notebook.results_dir().glob("*")):
    if (folder / "e5_curve.csv").is_file():
        results[folder.name] = (pd.read_csv(folder / "e5_curve.csv"), pd.read_csv(folder / "e5_noc.csv"))
        record = json.loads((folder / "e5_rows_test.json").read_text())
        print(f"{folder.name}: {record['slices']} slices of {record['patients']} patients, "
              f"starts {', '.join(record['starts'])}; made by `{record['command']}`")
if not results:
    print("no E5 results yet: run `python -m samhw refine` (see the README)")

# %%
if results:
    fig = plots.refinement_curves({name: curve for name, (curve, _) in results.items()})

# %%
for name, (curve, noc) in results.items():
    print(name)
    display(summary_table(curve, noc).drop(columns=["split"]))  # noqa: F821 (IPython)

# %% [markdown]
# ## Click to segment
# Left click: a positive point; Shift+click (or the "negative clicks" toggle): a negative point; drag:
# a box. "suggest next click" rings the pixel E5's protocol would click next. The dropdown switches
# models: the fine-tuned checkpoint appears when `runs/litemedsam-finetuned/best.pt` exists. Each
# action decodes once from the slice's prepared context and redraws with SAM's predicted IoU and the
# IoU against the truth.

# %%
models = {"pretrained": (model, embedding)}
tuned = notebook.repo_root() / "runs" / "litemedsam-finetuned" / "best.pt"
if tuned.is_file():
    tuned_model, tuned_cache = notebook.live_model(MODEL, str(tuned))
    models["fine-tuned"] = (tuned_model, tuned_cache.get(item.image))  # its own encoder's embedding
segmenter = ClickSegmenter(models, item.image, item.mask)
segmenter

# %% [markdown]
# The same widget driven from Python (what the buttons and clicks call): the tight box, then the
# click the protocol suggests.

# %%
ys, xs = np.nonzero(item.mask)
segmenter.drag(xs.min(), ys.min(), xs.max(), ys.max())
print({k: v for k, v in segmenter.state().items() if k in ("box", "area", "iou")})
suggestion = segmenter.suggest()
print("suggested:", suggestion)
segmenter.click(suggestion.x, suggestion.y, negative=suggestion.label == 0)
print({k: v for k, v in segmenter.state().items() if k in ("points", "area", "iou")})

# %% [markdown]
# ## Your own slice
# Any PNG, JPEG, TIFF or `.npy` slice of any size, or a NIfTI volume with a slice index, from the
# command line (writes the mask and an overlay PNG):
# ```
# python -m samhw segment my_slice.png --box 60 40 140 120 --out mask.png
# python -m samhw segment scan.nii.gz --slice 80 --point 120 96 --negative 30 30 --out mask.png
# ```
# or here: `samhw.imageio.read_slice` reads it, and the widget opens it like a dataset slice
# (without a truth, so without IoU and suggestions). Below, a test slice saved as a 384x384 PNG.

# %%
import tempfile  # noqa: E402

from PIL import Image  # noqa: E402

from samhw.imageio import read_slice  # noqa: E402

folder = Path(tempfile.mkdtemp())
Image.fromarray(np.repeat(np.repeat(item.image, 3, axis=0), 3, axis=1)[::2, ::2]).save(folder / "mine.png")
mine = read_slice(folder / "mine.png")
own = ClickSegmenter({"pretrained": model}, mine)
own.drag(1.5 * xs.min(), 1.5 * ys.min(), 1.5 * xs.max(), 1.5 * ys.max())
print(mine.shape, {k: v for k, v in own.state().items() if k in ("box", "area")})
own

# %% [markdown]
# The same file through `samhw.Predictor` (shaped like `segment_anything.SamPredictor`): `set_image`
# takes the path (or an array of any size), and prompts are pixels of that image: here the tight box
# scaled by 1.5, XYXY.

# %%
predictor = Predictor(model)
predictor.set_image(folder / "mine.png")
masks, scores, _ = predictor.predict(box=1.5 * np.array([xs.min(), ys.min(), xs.max(), ys.max()]), multimask_output=False)
print(f"masks {masks.shape}, predicted IoU {scores[0]:.3f}, mask {int(masks[0].sum())} px")
