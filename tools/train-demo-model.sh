#!/usr/bin/env bash
# Reproduces the demo model committed in models/demo/{retrieval,captioner}: every step is a
# quarry command, seeded, on this repository's recipes (models/recipes/demo-*: configurations,
# preprocessing and the real bert-base-uncased+[DEC] and OPT tokenizers) and on synthetic
# scenes (training seed 1; the held-out test set uses seed 2, the `quarry demo` scenes seed 7).
#
#   tools/train-demo-model.sh [WORK_DIR]      (default: ./demo-training; ~1 h on 2 CPU cores)
#
# Then: cp -r WORK/retrieval-f16/. models/demo/retrieval/ (without training/), same for the
# captioner, and rebuild (the demo models are embedded in the binary).
set -euo pipefail

WORK=${1:-demo-training}
Q=${QUARRY:-target/release/quarry}
R=models/recipes
mkdir -p "$WORK"

# 1. Training scenes (5 000 images, 19 034 captions) and the held-out test scenes.
[ -f "$WORK/synth-train/annotations.json" ] || "$Q" synth --out "$WORK/synth-train" --n 5000 --seed 1 --size 224
[ -f "$WORK/synth-test/annotations.json" ] || "$Q" synth --out "$WORK/synth-test" --n 1000 --seed 2 --size 224

# 2. The small image encoder: per-patch colour/shape labels (src/train/vision.rs), then frozen.
"$Q" train vision --data "$WORK/synth-train" --init $R/demo-retrieval --out "$WORK/vit" \
  --epochs 8 --max-steps 400 --batch 32 --lr 1e-3 --min-lr 1e-5 --warmup-steps 50 --seed 21 \
  --log-every 50 --save-every 400

# 3. The small OPT: language modelling on the training captions, then frozen.
"$Q" train lm --data "$WORK/synth-train" --init $R/demo-opt --out "$WORK/opt" \
  --epochs 3 --batch 32 --lr 1e-3 --min-lr 1e-5 --warmup-lr 1e-6 --warmup-steps 50 --seed 12 \
  --save-every 100 --log-every 10

# 4. BLIP-2 stage 1: the Q-Former against the frozen encoder (ITC + ITM + ITG).
"$Q" train stage1 --data "$WORK/synth-train" --init $R/demo-retrieval --vision-from "$WORK/vit" \
  --out "$WORK/stage1" --epochs 4 --batch 32 --lr 5e-4 --min-lr 1e-5 --warmup-lr 1e-6 \
  --warmup-steps 100 --seed 31 --save-every 100 --log-every 10 --save-dtype f16

# 5. BLIP-2 stage 2: the stage-1 Q-Former as a soft prompt of the frozen OPT.
"$Q" train stage2 --data "$WORK/synth-train" --init $R/demo-captioner \
  --qformer-from "$WORK/stage1" --language-model "$WORK/opt" --out "$WORK/captioner" \
  --epochs 2 --batch 32 --lr 5e-4 --min-lr 1e-5 --warmup-lr 1e-6 --warmup-steps 50 --seed 41 \
  --save-every 100 --log-every 10 --save-dtype f16

# 6. Held-out quality: recall (ITC alone and with ITM re-ranking) and caption accuracy.
"$Q" eval --model "$WORK/stage1" --annotations "$WORK/synth-test/annotations.json" \
  --images "$WORK/synth-test" --k-test 16
"$Q" eval-captions --data "$WORK/synth-test" --caption-model "$WORK/captioner"
