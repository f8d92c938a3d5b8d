#!/usr/bin/env bash
# End to end on one CPU machine, and visibly learning: scikit-learn's handwritten digits -> shards with a
# held-out fifth -> SOLO pre-training (megatron-core, validation loss as it trains) -> held-out accuracy
# next to logistic regression on the same pixels -> export to stock transformers -> the exported model
# names a held-out digit. About 3 minutes on 2 idle cores.
#
# The same commands run on another image-classification set:
#   DATA=path/to/class-folders [CLASS_NAMES=names.json] [CAPTION='a photo of a {}.'] bash examples/quickstart.sh
# DATA is a folder of class sub-folders or a label file (see tools/preprocess_data.py --help); CLASS_NAMES
# maps labels to names (default: the label itself). Images are resized by SOLO's rule with their long
# side at most MAX_SIDE (default 64) pixels, so a CPU run stays short. WORK (default
# work_dirs/quickstart) is replaced on each run, but only if this script made it.
set -euo pipefail
# Paths the caller gives are relative to where they called from; the default work folder lives in the repo.
for var in WORK DATA CLASS_NAMES; do
  if [ -n "${!var:-}" ]; then printf -v "$var" '%s' "$(realpath -m -- "${!var}")"; fi
done
cd "$(dirname "$0")/.."
W=${WORK:-work_dirs/quickstart}
STEPS=${STEPS:-300}
CAPTION=${CAPTION:-"{}"}
fail() { echo "error: $*" >&2; exit 2; }
# Every input is checked before anything is removed or written.
[[ "$STEPS" =~ ^[0-9]+$ ]] && ((STEPS >= 1)) || fail "STEPS=$STEPS: give a whole number of training steps, at least 1"
for var in DATA CLASS_NAMES; do
  if [ -n "${!var:-}" ] && [ ! -e "${!var}" ]; then fail "$var=${!var} does not exist"; fi
done
if [ -n "${DATA:-}" ]; then
  case "$(realpath -m -- "$DATA")/" in
    "$(realpath -m -- "$W")"/*) fail "DATA=$DATA is inside WORK=$W, which each run replaces; keep the data elsewhere" ;;
  esac
  if [ -d "$DATA" ] && (($(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l) < 2)); then
    fail "DATA=$DATA holds fewer than two class folders; classification needs at least two classes"
  fi
fi
if [ -e "$W" ] && [ ! -e "$W/.made-by-quickstart" ] && [ -n "$(ls -A "$W")" ]; then
  fail "$W exists and was not made by this script; set WORK to a new folder"
fi
rm -rf "$W"
mkdir -p "$W" && touch "$W/.made-by-quickstart"
if [ -z "${DATA:-}" ]; then
  python tools/make_demo_data.py --out "$W/raw" --text-limit 200
  DATA=$W/raw/digits CLASS_NAMES=$W/raw/digit_names.json
fi
# Each 8x8 digit becomes one 32x32 patch (SOLO's resize rule); the caption is its class name ("digit 3").
python tools/preprocess_data.py --kind classification --input "$DATA" ${CLASS_NAMES:+--class-names "$CLASS_NAMES"} \
  --caption-template "$CAPTION" --max-side "${MAX_SIDE:-64}" --image-format png --holdout 0.2 \
  --output "$W/shards/data" --quiet > "$W/preprocess.json"
# solo-tiny at width 128 with a wide initialisation: across seeds and data sets it learned the most
# within a few minutes (widths 64 and 128, init std 0.02 and 0.1 compared; see benchmarks/RESULTS.md).
python tools/pretrain.py --model solo-tiny --model-overrides '{"init_method_std": 0.1, "hidden_size": 128, "ffn_hidden_size": 256}' \
  --data "$W/shards/data" --eval-data "$W/shards/data/heldout" --eval-interval 50 --eval-iters 2 \
  --seq-length 256 --global-batch-size 4 --train-steps "$STEPS" --lr 3e-3 --min-lr 3e-4 --warmup-steps 10 \
  ${SEED:+--seed "$SEED"} --save "$W/ckpt" --save-interval "$STEPS" --tensorboard-dir "$W/tensorboard" --data-workers 1
python tools/evaluate.py --checkpoint "$W/ckpt" --classify "$W/shards/data/heldout" \
  --baseline-train "$W/shards/data" --val-data "$W/shards/data/heldout" --out "$W/eval.json" --quiet
python tools/export_to_hf.py --checkpoint "$W/ckpt" --out "$W/hf"
# One held-out image as a PNG file, and what the exported model (stock transformers) says it is. The
# prompt is the start all held-out captions share ("digit"; empty for plain class names).
{ read -r IMAGE; read -r PROMPT; read -r LABEL; } < <(python - "$W" <<'PY'
import os
import sys
from pathlib import Path

from megatron_solo.data.shards import load_index, read_members
from megatron_solo.data.shard_set import preprocess_config
from megatron_solo.evaluation.heldout import HeldOutSet
from megatron_solo.vocab import SoloTokenizer

w, tok = Path(sys.argv[1]), SoloTokenizer()
held = HeldOutSet(w / "shards/data/heldout", preprocess_config(w / "shards/data/heldout")["patch_size"])
docs = [held.text_only(i).doc for i in range(len(held))]
captions = [tok.decode([t for t in d.ids[d.target].tolist() if t != tok.eos_id]).split() for d in docs]
shared = len(os.path.commonprefix(captions))
tar = held.shards.indexes[0].tar_path
ix = load_index(tar)
members = read_members(tar, int(ix.offset[0]), int(ix.end[0]), str(ix.keys[0]))
(w / "heldout_image.png").write_bytes(next(v for k, v in members.items() if k.endswith(".png")))
print(w / "heldout_image.png", " ".join(captions[0][:shared]), " ".join(captions[0][shared:]), sep="\n")
PY
)
ANSWER=$(python tools/generate.py --model "$W/hf" --image "$IMAGE" --prompt "$PROMPT" --max-new-tokens 5)
echo "held-out image of '$LABEL' ($IMAGE): asked to complete '$PROMPT', the exported model says '$ANSWER'"
echo "quick start done: checkpoints in $W/ckpt, Hugging Face model in $W/hf, report in $W/eval.json," \
  "logs and loss_curve.png in $W/tensorboard"
