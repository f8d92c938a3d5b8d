#!/usr/bin/env bash
# SOLO's whole recipe on one CPU machine, each stage from the previous stage's weights with a fresh optimizer:
#   stage 1  classification: scikit-learn's digits, foolbox's ImageNet photos, text (the quick start's sources)
#   stage 2  captions and VQA-style documents of generated scenes (data/scenes.py), plus text
#   stage 3  a short annealing mix of all of them at a falling learning rate
#   sft      [INST] conversations about the scenes (--recipe sft: loss only on the answers)
# After each stage: the held-out loss per source. At the end: the exported model answers multiple-choice and
# short-answer questions about held-out scenes (tools/evaluate.py), next to the same recipe with every image blanked
# (a model that never saw a picture), so the gain from vision is a number. Both chains run side by side,
# one core each.
#
# Knobs: WORK (default work_dirs/recipe; replaced only if this script made it), STEPS1 STEPS2 STEPS3
# STEPS_SFT (steps per stage), SCENES (generated training scenes), MAX_SAMPLES (cap on evaluated items per
# source, for a quick look), SEED. For the stage-1 ablation (benchmarks/bench_recipe.py): CHAINS (default
# "images blanked"), LAST_STAGE (stop after stage1/stage2/stage3), STAGE2_FROM=base (stage 2 from the
# untrained model, no stage 1), EVAL_INTERVAL (validate every this many steps; default: at each stage's end).
set -euo pipefail
if [ -n "${WORK:-}" ]; then WORK=$(realpath -m -- "$WORK"); fi
cd "$(dirname "$0")/.."
W=${WORK:-work_dirs/recipe}
STEPS1=${STEPS1:-150} STEPS2=${STEPS2:-300} STEPS3=${STEPS3:-60} STEPS_SFT=${STEPS_SFT:-200}
SCENES=${SCENES:-3000}
CHAINS=${CHAINS:-images blanked} LAST_STAGE=${LAST_STAGE:-sft} STAGE2_FROM=${STAGE2_FROM:-stage1}
fail() { echo "error: $*" >&2; exit 2; }
for var in STEPS1 STEPS2 STEPS3 STEPS_SFT SCENES ${MAX_SAMPLES:+MAX_SAMPLES} ${SEED:+SEED} \
           ${EVAL_INTERVAL:+EVAL_INTERVAL}; do
  [[ "${!var}" =~ ^[0-9]+$ ]] && ((${!var} >= 1)) || fail "$var=${!var}: give a whole number, at least 1"
done
for d in $CHAINS; do [[ $d =~ ^(images|blanked)$ ]] || fail "CHAINS=$CHAINS: name images and/or blanked"; done
[[ $LAST_STAGE =~ ^(stage1|stage2|stage3|sft)$ ]] || fail "LAST_STAGE=$LAST_STAGE: one of stage1 stage2 stage3 sft"
[[ $STAGE2_FROM =~ ^(stage1|base)$ ]] || fail "STAGE2_FROM=$STAGE2_FROM: stage1 or base"
if [ -e "$W" ] && [ ! -e "$W/.made-by-recipe" ] && [ -n "$(ls -A "$W")" ]; then
  fail "$W exists and was not made by this script; set WORK to a new folder"
fi
rm -rf "$W"
mkdir -p "$W" && touch "$W/.made-by-recipe"
export OMP_NUM_THREADS=1  # two chains side by side, one core each
# solo-tiny at width 128 with a wide initialisation, as the quick start (benchmarks/RESULTS.md).
MODEL=(--model solo-tiny --model-overrides '{"init_method_std": 0.1, "hidden_size": 128, "ffn_hidden_size": 256}')
COMMON=(--seq-length 256 --global-batch-size 4 --eval-iters 2 --data-workers 0 ${SEED:+--seed "$SEED"})
SOURCES=(digits captions vqa text conversations)

prepare() {  # $1: the chain's folder; $2...: make_demo_data's extra options
  local d=$1 s=$1/shards
  shift
  mkdir -p "$d"
  python tools/make_demo_data.py --out "$d/raw" --text-limit 200 --scenes "$SCENES" "$@" > "$d/raw.txt"
  local pre=(python tools/preprocess_data.py --max-side 64 --image-format png --quiet)
  "${pre[@]}" --kind classification --input "$d/raw/digits" --class-names "$d/raw/digit_names.json" \
    --holdout 0.2 --output "$s/digits" > /dev/null
  "${pre[@]}" --kind classification --input "$d/raw/imagenet" --class-names "$d/raw/class_names.json" \
    --caption-template 'a photo of a {}.' --output "$s/photos" > /dev/null
  "${pre[@]}" --kind text --input "$d/raw/text.jsonl" --holdout 20 --output "$s/text" > /dev/null
  for src in captions vqa; do
    "${pre[@]}" --kind caption --input "$d/raw/scenes/$src.jsonl" --holdout 0.04 --output "$s/$src" > /dev/null
  done
  "${pre[@]}" --kind conversation --input "$d/raw/scenes/conversations.jsonl" --holdout 0.04 \
    --output "$s/conversations" > /dev/null
}

evaluate() {  # $1: chain folder, $2: stage, $3: model option (--checkpoint DIR or --hf DIR); then extra options
  local d=$1 stage=$2 val=()
  for src in "${SOURCES[@]}"; do val+=("$d/shards/$src/heldout:$src"); done
  python tools/evaluate.py "$3" "$4" --val-data "${val[@]}" ${MAX_SAMPLES:+--max-samples "$MAX_SAMPLES"} \
    --out "$d/$stage.json" --quiet "${@:5}" > "$d/$stage.eval.txt" 2>&1 \
    || { tail -20 "$d/$stage.eval.txt" >&2; fail "$d: evaluating $stage failed (log: $d/$stage.eval.txt)"; }
}

stage() {  # $1: chain folder, $2: stage name, $3: steps, $4: previous stage or "", then pretrain options
  local d=$1 name=$2 steps=$3 prev=$4 start=$SECONDS
  python tools/pretrain.py --recipe "$name" "${MODEL[@]}" "${COMMON[@]}" \
    ${prev:+--init-from "$d/ckpt/$prev"} --train-steps "$steps" --save "$d/ckpt/$name" --save-interval "$steps" \
    --eval-interval "${EVAL_INTERVAL:-$steps}" --tensorboard-dir "$d/tensorboard/$name" "${@:5}" > "$d/$name.log" 2>&1 \
    || { tail -20 "$d/$name.log" >&2; fail "$d: $name failed (log: $d/$name.log)"; }
  [ "$name" = sft ] || evaluate "$d" "$name" --checkpoint "$d/ckpt/$name"
  echo "$(basename "$d"): $name done in $((SECONDS - start)) s"
}

chain() {  # $1: chain folder; the four stages, then the export answers the held-out questions
  local d=$1 s=$1/shards
  if [ "$STAGE2_FROM" = stage1 ]; then
    stage "$d" stage1 "$STEPS1" "" --data "$s/digits:0.6" "$s/photos:0.1" "$s/text:0.3" \
      --eval-data "$s/digits/heldout" --lr 3e-3 --min-lr 3e-4 --warmup-steps 10
  fi
  [ "$LAST_STAGE" != stage1 ] || return 0
  stage "$d" stage2 "$STEPS2" "${STAGE2_FROM#base}" --data "$s/captions:0.3" "$s/vqa:0.5" "$s/text:0.2" \
    --eval-data "$s/captions/heldout" --lr 3e-3 --min-lr 3e-4 --warmup-steps 10
  [ "$LAST_STAGE" != stage2 ] || return 0
  stage "$d" stage3 "$STEPS3" stage2 --data "$s/vqa:0.4" "$s/captions:0.2" "$s/digits:0.2" "$s/text:0.1" \
    "$s/conversations:0.1" --eval-data "$s/vqa/heldout" --lr 1e-3 --min-lr 1e-5 --warmup-steps 5
  [ "$LAST_STAGE" != stage3 ] || return 0
  stage "$d" sft "$STEPS_SFT" stage3 --data "$s/conversations" --eval-data "$s/conversations/heldout" \
    --lr 1e-3 --min-lr 1e-4 --warmup-steps 10
  python tools/export_to_hf.py --checkpoint "$d/ckpt/sft" --out "$d/hf" > "$d/export.log" 2>&1 \
    || { tail -20 "$d/export.log" >&2; fail "$d: export failed"; }
  evaluate "$d" sft --hf "$d/hf" --mcq "$d/raw/scenes/mcq.jsonl" --mcq-mode loglik \
    --benchmark "vqa=$d/raw/scenes/short_answer.jsonl" --benchmark-max-new-tokens 6
}

start=$SECONDS
for d in $CHAINS; do
  ( prepare "$W/$d" $([ $d = blanked ] && echo --blank-images); chain "$W/$d" ) &
done
status=0
for job in $(jobs -p); do wait "$job" || status=$?; done
((status == 0)) || fail "a chain failed (above)"
echo "chains done in $((SECONDS - start)) s"
[ "$LAST_STAGE" = sft ] && [ "$CHAINS" = "images blanked" ] && [ "$STAGE2_FROM" = stage1 ] \
  || { echo "recipe part done (CHAINS=$CHAINS LAST_STAGE=$LAST_STAGE STAGE2_FROM=$STAGE2_FROM): $W"; exit 0; }
python - "$W" "${SOURCES[@]}" <<'PY'
import json
import sys
from pathlib import Path

w, sources = Path(sys.argv[1]), sys.argv[2:]
print(f"held-out loss per source (images / images blanked), work folder {w}")
print(f"{'stage':<8}" + "".join(f"{s:>20}" for s in sources))
for stage in ("stage1", "stage2", "stage3", "sft"):
    losses = [json.loads((w / d / f"{stage}.json").read_text())["val_loss"] for d in ("images", "blanked")]
    print(f"{stage:<8}" + "".join(f"{losses[0][s]['loss']:>10.3f} / {losses[1][s]['loss']:<7.3f}" for s in sources))
final = [json.loads((w / d / "sft.json").read_text()) for d in ("images", "blanked")]
tasks = {"multiple choice": (lambda r: r["mcq"], "loglik", "option log-likelihood"),
         "short answers": (lambda r: r["benchmarks"]["vqa"], "generate", "greedy answer, exact match")}
for what, (part, mode, how) in tasks.items():
    parts = [part(r) for r in final]
    acc = [100 * p[mode]["accuracy"] for p in parts]
    print(f"{what} on {parts[0]['questions']} held-out scenes (exported model, {how}): {acc[0]:.1f}% with images "
          f"vs {acc[1]:.1f}% with images blanked ({acc[0] - acc[1]:+.1f} points)")
PY
echo "recipe done: checkpoints in $W/{images,blanked}/ckpt, exports in $W/{images,blanked}/hf, reports *.json"
