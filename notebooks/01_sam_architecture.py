# %% [markdown]
# # 01 · SAM's three parts, on real modules
#
# Segment Anything (SAM) has three parts: a heavy **image encoder** that turns the image into a
# 64x64 grid of 256-d features once per image, a light **prompt encoder** that turns points, boxes
# and masks into tokens, and a light **mask decoder** that answers a prompt in a few milliseconds
# on a GPU. This notebook opens each part on the real `segment_anything` modules the project uses
# (`samhw.models`): every shape below is measured by forward hooks while the module runs
# (`samhw.architecture.trace`), every parameter count is read from the module.
#
# * SAM ViT-B (1024x1024 input) is built **without weights** on PyTorch's `meta` device: real modules
#   and shapes, no numbers, no arithmetic.
# * LiteMedSAM (the project's default model) runs for real, with its weights, on a real MRI slice:
#   a TinyViT image encoder at 256x256 and SAM's own prompt encoder and mask decoder.

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
from samhw import architecture, notebook, plots, study
from samhw.prompts import PromptSpec, Target

notebook.setup()

# %% tags=["parameters"]
# Parameters. FULL = True runs ViT-B for real (random weights, about a minute on a CPU) instead of on the meta device.
FULL = False
MODEL, CHECKPOINT = "litemedsam", None  # or "vit_b" with CHECKPOINT = "sam_vit_b_01ec64.pth" (downloaded by you)

# %% [markdown]
# ## The data
#
# One real slice of the LGG Segmentation Dataset (Buda et al. 2019; Kaggle
# `mateuszbuda/lgg-mri-segmentation`, CC BY-NC-SA 4.0): 256x256, three channels (pre-contrast,
# FLAIR, post-contrast) and a tumour mask. `notebook.find_data()` looks in `$SAMHW_DATA`, then
# `data/kaggle_3m` in the checkout, then the project's shared copy.
#
# **No data yet (in Colab, say)?** Download it once from Kaggle, then set `SAMHW_DATA`:
# ```
# !pip install -q kaggle   # and upload kaggle.json (Kaggle > Settings > API > Create New Token)
# !mkdir -p ~/.kaggle && cp kaggle.json ~/.kaggle/ && chmod 600 ~/.kaggle/kaggle.json
# !kaggle datasets download -d mateuszbuda/lgg-mri-segmentation && unzip -q lgg-mri-segmentation.zip -d data/lgg
# import os; os.environ["SAMHW_DATA"] = "data/lgg/kaggle_3m"
# ```

# %%
model, cache = notebook.live_model(MODEL, CHECKPOINT)
item = study.gallery_slices(notebook.live_slices("test", 6), 3)[1]  # a middle-sized tumour of the test split
target = Target(item.mask, item.image, item.slice_id)
print(f"{item.slice_id}: {int(item.mask.sum())} tumour pixels, tight box {target.box.tolist()}")

# %% [markdown]
# ## 1. The image encoder
#
# ### SAM ViT-B, built without weights
# The 1024x1024 input is cut into 16x16 patches: a 64x64 grid of 768-d tokens. Twelve transformer
# blocks follow, most attending within 14x14 windows and four (2, 5, 8, 11) globally. The **neck**
# then maps 768 channels to 256 with a 1x1 convolution and mixes neighbours with a 3x3 convolution,
# each followed by a LayerNorm over channels: the 64x64x256 image embedding.

# %%
vit_b = architecture.vit_b_without_weights(meta=not FULL)
architecture.encoder_trace(vit_b, item.image)

# %%
vit_b.image_encoder.neck

# %% [markdown]
# ### LiteMedSAM's TinyViT at 256x256
# LiteMedSAM (MedSAM distilled into a small encoder) replaces ViT-B with TinyViT: convolutions first
# (a 1/4-resolution patch embedding and MBConv blocks), then windowed-attention stages, and the same
# neck. It reaches the same 64x64x256 embedding from a 256x256 input, so SAM's decoder works unchanged.

# %%
architecture.encoder_trace(model, item.image)

# %%
architecture.parameter_table({"SAM ViT-B": vit_b, "LiteMedSAM": model})

# %%
embedding = cache.get(item.image)
fig = plots.embedding_picture(item.image, item.mask, architecture.embedding_pca(embedding))

# %% [markdown]
# ## 2. The prompt encoder
#
# ### Positional encoding: random Fourier features
# A position p (scaled to [0, 1]) is encoded by 128 fixed random 2-D frequencies G_k drawn from a
# Gaussian at initialisation: PE(p) = [sin 2pi (2p-1)·G_k, cos 2pi (2p-1)·G_k], 256 numbers. The same
# encoding of the 64x64 grid (`get_dense_pe`) is added to the image embedding inside the decoder.

# %%
fig = plots.positional_encoding(*architecture.positional_encoding(model))

# %% [markdown]
# ### Points and box corners become tokens
# A point's token is the positional encoding of its pixel centre plus a learned embedding of its
# label (foreground or background); a box is two tokens, its corners, with learned "top-left" and
# "bottom-right" embeddings. A point without a box is followed by a learned padding token. The last
# column checks this decomposition on the live tensors.

# %%
architecture.sparse_tokens(model, target)

# %% [markdown]
# ### The dense path: a mask prompt, and the no-mask embedding
# A mask prompt comes at 4x the embedding's resolution (256x256) and is downscaled 4x by two 2x2,
# stride-2 convolutions (4 then 16 channels, each with LayerNorm and GELU) and lifted to 256 channels by a
# 1x1 convolution, to be added to the image embedding. The project never prompts with a mask: then a
# single learned **no-mask** embedding is added at every grid position instead.

# %%
dense_table, dense_out, no_mask_is_broadcast = architecture.mask_path(model, item.mask)
print("without a mask, the dense prompt is the no-mask embedding broadcast over 64x64:", no_mask_is_broadcast)
dense_table

# %% [markdown]
# ## 3. The mask decoder
#
# The tokens (one IoU token, four mask tokens, then the prompt tokens) and the 4096 image positions
# pass twice through a **two-way transformer** block of four steps: (1) self-attention among the tokens,
# (2) tokens attend to the image, (3) an MLP on each token, (4) the image attends to the tokens. A last
# token-to-image attention follows. The image grid is **upscaled** 4x by two transposed convolutions
# to 256x256x32; each mask token's output goes through its own **hypernetwork MLP** to 32 weights,
# and a mask is the dot product of those weights with the upscaled features at every pixel. The
# **IoU head** reads the IoU token and predicts each mask's quality.

# %%
box = PromptSpec.parse("box:0").draw(target, 0)
architecture.decoder_trace(model, embedding, box, item.mask.shape)

# %% [markdown]
# ### Multimask output
# Mask token 0 is the single-mask answer (used for boxes and combined prompts); tokens 1-3 are the
# multimask answer for an ambiguous prompt such as one point, from which the project keeps the mask
# of highest predicted IoU. LiteMedSAM was trained on boxes only, so its single-point masks are near empty.

# %%
for name in ("box:0", "center_mask"):
    prompt = PromptSpec.parse(name).draw(target, 0)
    masks, scores = architecture.all_masks(model, embedding, prompt, item.mask.shape)
    plots.mask_outputs(item.image, item.mask, masks, scores, prompt, title=f"{MODEL}, prompt {name}")

# %% [markdown]
# ## 4. The data flow, with the shapes measured above

# %%
fig = plots.sam_dataflow(architecture.dataflow_shapes(model, item.image, box, embedding), title=f"{MODEL}: data flow on {item.slice_id}")
