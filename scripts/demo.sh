#!/usr/bin/env bash
# The README demo, on the embedded local backend: set up, stage a tiny Gemma 3 and synthetic pets,
# fine-tune + evaluate as a local "job", then show the results table. No cloud account, no network.
set -euo pipefail

step() { printf '\n\033[1m$ gemmactl --local %s\033[0m\n' "$*" >&2; gemmactl --local "$@"; }

export GEMMACTL_MODEL=builtin:tiny-gemma3          # what doctor checks and train fine-tunes
export GEMMACTL_DATASET=builtin:synthetic-pets

step init
step doctor
step stage-model builtin:tiny-gemma3
step stage-data builtin:synthetic-pets
# A tiny random model needs a large learning rate; real Gemma runs use the defaults (1e-4).
step train --size 740 --eval-size 111 --epochs 4 --batch-size 16 --grad-accum 1 --lr 1e-2 \
  --set prompt=short --save-steps 20 --follow
step results
