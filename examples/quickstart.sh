#!/usr/bin/env bash
# End-to-end on one CPU machine: real images and text -> shards -> SOLO pre-training on two
# processes (tensor parallel 2, megatron-core on gloo) -> export to stock transformers -> answer.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-work_dirs/quickstart}
STEPS=${STEPS:-30}
rm -rf "$W"
python tools/make_demo_data.py --out "$W/raw"
python tools/preprocess_data.py --kind classification --input "$W/raw/imagenet" \
  --class-names "$W/raw/class_names.json" --caption-template "a photo of a {}." --max-side 256 \
  --output "$W/shards/imagenet"
python tools/preprocess_data.py --kind text --input "$W/raw/text.jsonl" --output "$W/shards/text"
# Stage-1 style blend (0.7 images / 0.3 text), a tiny model, TP2 on two processes.
torchrun --nproc-per-node 2 tools/pretrain.py --model solo-tiny --model-overrides '{"vocab_size": 33031}' \
  --data "$W/shards/imagenet:0.7" "$W/shards/text:0.3" --seq-length 1024 --global-batch-size 4 \
  --train-steps "$STEPS" --lr 2e-3 --warmup-steps 3 --tensor-parallel 2 --fp32 \
  --save "$W/ckpt" --save-interval 10 --tensorboard-dir "$W/tensorboard" --data-workers 1
python tools/export_to_hf.py --checkpoint "$W/ckpt" --out "$W/hf"
IMAGE=$(ls "$W"/raw/imagenet/*/*.jpg | head -n 1)
python tools/generate.py --model "$W/hf" --image "$IMAGE" --prompt "What is in this image?" --max-new-tokens 12
echo "quick start done: checkpoints in $W/ckpt, Hugging Face model in $W/hf, logs in $W/tensorboard"
