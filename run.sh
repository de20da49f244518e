#!/usr/bin/env bash
# The whole pipeline for one preset: data -> "pretrained" full-attention model -> SFT -> RL -> evaluation, for
# full attention (SA) and a sliding window (SWA), then runs/<preset>/REPORT.md (report.py).
#
#     bash run.sh tiny          # CPU, a few minutes: toy byte-level model on the synthetic long-range task
#
# Everything is written under runs/<preset>/ (data, checkpoints, eval/, REPORT.md); data/ is not touched.
# A rerun starts the preset over from scratch.
#
# Why these windows: evaluate.py asks every question followed by a ~145-character instruction, so with the
# byte tokenizer even a gap-0 problem puts its numbers ~160 tokens before the answer. The window must cover
# that (W=192) and the long gap must exceed what two layers can relay (2 x (W-1) tokens), so gaps are 0 and 256.
set -euo pipefail
cd "$(dirname "$0")"

preset=${1:-}
case "$preset" in
  tiny)
    W=192                   # the SWA arm's window (keys per query, itself included)
    GAPS=0,256              # synthetic gaps in tokens (= characters for the byte tokenizer)
    N_TRAIN=2000 N_TEST=64  # synthetic problems
    DIM=64 LAYERS=2 HEADS=4 KV_HEADS=2 HIDDEN=176   # toy model (model.Config)
    PRE_ARGS="--steps 150 --lr 3e-3 --warmup-steps 10 --seq-len 1024 --batch-size 8"   # "pretraining" (sft.py)
    SFT_ARGS="--steps 30 --lr 1e-3 --warmup-steps 3 --seq-len 1024 --batch-size 8"     # SFT of each arm
    RL_ARGS="--steps 8 --prompts-per-step 8 --group-size 4 --max-new-tokens 64 --lr 1e-4 --warmup-steps 1"
    EVAL_ARGS="--limit $N_TEST --max-new-tokens 64 --batch-size 32"
    ;;
  *)
    echo "usage: bash run.sh PRESET   (presets: tiny)" >&2
    exit 2
    ;;
esac

R=runs/$preset
DATA=$R/data
COMMON_TRAIN="--device cpu --val-size 64 --eval-every 0 --save-every 0"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

rm -rf "$R"
mkdir -p "$R"

stamp "data: synthetic task, gaps $GAPS"
python -m data.synthetic --n-train "$N_TRAIN" --n-test "$N_TEST" --gaps "$GAPS" --out-dir "$DATA/synthetic"

stamp "init: random full-attention toy model"
python - "$R/init" "$DIM" "$LAYERS" "$HEADS" "$KV_HEADS" "$HIDDEN" <<'EOF'
import sys
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer
out, dim, layers, heads, kv_heads, hidden = sys.argv[1], *map(int, sys.argv[2:])
tok = toy_tokenizer()
cfg = Config(vocab_size=tok.vocab_size, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
             hidden_dim=hidden, window=None)
save_checkpoint(out, Transformer(cfg).init_weights(0), tok, {"stage": "init"})
print(f"{out}: {cfg}")
EOF

stamp "pretrain: full attention on synthetic train (stands in for a pretrained model)"
python sft.py --ckpt "$R/init" --out "$R/pretrained" --window none --data "$DATA/synthetic/train.jsonl" \
  $COMMON_TRAIN $PRE_ARGS

for arm in sa swa; do
  if [ $arm = sa ]; then win=none; else win=$W; fi
  stamp "$arm: SFT (window $win)"
  python sft.py --ckpt "$R/pretrained" --out "$R/$arm-sft" --window $win --data "$DATA/synthetic/train.jsonl" \
    --seed 1 $COMMON_TRAIN $SFT_ARGS
  stamp "$arm: RL (window $win)"
  python rl.py --ckpt "$R/$arm-sft" --out "$R/$arm-rl" --window $win --task synthetic --data-dir "$DATA" \
    --device cpu --eval-every 0 --no-progress $RL_ARGS
done

stamp "evaluate: before SFT (both windows), after SFT, after RL"
EV="python evaluate.py --tasks synthetic --data-dir $DATA --out-dir $R/eval --device cpu $EVAL_ARGS"
$EV --ckpt "$R/pretrained" --window none
$EV --ckpt "$R/pretrained" --window "$W"
$EV --ckpt "$R/sa-sft" --ckpt "$R/sa-rl"
$EV --ckpt "$R/swa-sft" --ckpt "$R/swa-rl"

stamp "report"
python report.py "$R"
stamp "done: $R/REPORT.md"
