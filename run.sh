#!/usr/bin/env bash
# The whole experiment for one preset: a full-attention starting model -> SFT -> RL -> evaluation, with full
# attention (SA) and with sliding windows (SWA), then REPORT.md (analysis/report.py) from the runs' own JSON.
#
#     bash run.sh tiny              # CPU, a few minutes: toy byte-level model on the synthetic long-range task
#     bash run.sh smollm2-gsm8k     # one GPU: SmolLM2-135M-Instruct on GSM8K, then on the synthetic task at a
#                                   # set binding distance; about 45 minutes on an H200 (results/README.md)
#
# Everything goes under runs/<preset>/ (or $RUNS/<preset>/): base/ (the starting model), <arm>-sft/ and
# <arm>-rl/ for arm = sa, swa<W>, eval/ (evaluate.py's records and summary.json) and REPORT.md with its plots.
# Stopped runs continue: a stage that finished is skipped (runs/<preset>/done/), an interrupted training
# stage resumes from its last checkpoint, and evaluation skips the problems it already scored.
# `rm -rf runs/<preset>` starts over, and the same command can run in pieces, e.g. `timeout 600 bash run.sh
# smollm2-gsm8k` repeated. Any variable set in a preset below can be overridden from the environment, an empty
# value included: `WINDOWS="32" BASE_WINDOWS= bash run.sh smollm2-gsm8k`.
set -euo pipefail
cd "$(dirname "$0")"

preset=${1:-}
case "$preset" in
  tiny)
    # evaluate.py asks every question followed by a ~145-character instruction, so with the byte tokenizer
    # even a gap-0 problem puts its numbers ~160 tokens before the answer. The window must cover that (W=192),
    # and the long gap must exceed what two layers can relay (2 x (W-1) tokens): gaps 0 and 256.
    : "${WINDOWS=192}"                 # SWA arms (keys per query, itself included)
    : "${BASE_WINDOWS=64 128 256}"     # extra windows the untrained model is evaluated at
    : "${GAPS=0,256}" "${N_TRAIN=2000}" "${N_TEST=64}"   # synthetic problems (gaps in tokens = characters)
    : "${MAX_VALUE=9}"                 # one-digit values: the toy learns the sums, the window decides the recall
    : "${DEVICE=cpu}"
    : "${PRE_ARGS=--steps 150 --lr 3e-3 --warmup-steps 10 --seq-len 1024 --batch-size 8}"  # "pretraining"
    : "${SFT_ARGS=--steps 30 --lr 1e-3 --warmup-steps 3 --seq-len 1024 --batch-size 8 --val-size 64}"
    : "${RL_ARGS=--steps 8 --prompts-per-step 8 --group-size 4 --max-new-tokens 64 --lr 1e-4 --warmup-steps 1
                  --eval-every 4 --eval-limit 32}"
    : "${EVAL_ARGS=--limit $N_TEST --max-new-tokens 64 --batch-size 32}"
    ;;
  smollm2-gsm8k)
    # A GSM8K prompt plus its solution is a few hundred tokens, so windows of 64 and 128 bind. The synthetic
    # part sets the binding distance exactly: the first number is 0, 64 or 256 tokens before the question.
    : "${WINDOWS=64 128}"
    : "${BASE_WINDOWS=32 256}"
    : "${EVAL_TASKS=gsm8k,svamp,asdiv}"
    : "${PARTS=gsm8k synthetic}"       # the two experiments; PARTS=synthetic runs only the second
    : "${SYN_WINDOWS=64}" "${GAPS=0,64,256}" "${N_TRAIN=4000}" "${N_TEST=256}" "${MAX_VALUE=99}"
    : "${DEVICE=cuda}"
    : "${SFT_ARGS=--epochs 2 --lr 1e-4 --warmup-steps 10 --seq-len 2048 --batch-size 16 --save-every 50}"
    # On an H200: an SFT ~1 minute, an RL step ~15 s, an evaluation on the three benchmarks ~45 s.
    : "${RL_ARGS=--steps 30 --prompts-per-step 64 --group-size 8 --max-new-tokens 384 --gen-batch 512
                  --batch-size 32 --lr 5e-6 --warmup-steps 3 --eval-every 10 --eval-limit 256 --save-every 5}"
    : "${SYN_SFT_ARGS=--steps 60 --lr 1e-4 --warmup-steps 5 --seq-len 2048 --batch-size 16}"
    : "${SYN_RL_ARGS=--steps 15 --prompts-per-step 64 --group-size 8 --max-new-tokens 96 --gen-batch 512
                      --batch-size 64 --lr 5e-6 --warmup-steps 2 --eval-every 5 --eval-limit 128 --save-every 5}"
    : "${EVAL_ARGS=--max-new-tokens 384 --batch-size 1024}"
    ;;
  *)
    echo "usage: bash run.sh PRESET   (presets: tiny, smollm2-gsm8k)" >&2
    exit 2
    ;;
esac

R=${RUNS:-runs}/$preset
mkdir -p "$R/done"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

# stage NAME COMMAND...: run COMMAND unless stage NAME finished in an earlier invocation
stage() {
  local name=$1; shift
  if [ -e "$R/done/$name" ]; then stamp "$name: finished earlier"; return; fi
  stamp "$name"
  "$@"
  touch "$R/done/$name"
}
# --resume when an interrupted earlier invocation left a checkpoint of this training stage
resume() { if [ -f "$1/trainer_state.pt" ]; then echo --resume; fi; }

# experiment DIR TASK DATA_DIR EVAL_TASKS "WINDOWS" "SFT_ARGS" "RL_ARGS": SA and SWA arms from $R/base on
# one training task, every evaluation the report needs, and DIR/REPORT.md.
experiment() {
  local dir=$1 task=$2 data=$3 tasks=$4 windows=$5 sft_args=$6 rl_args=$7 arm win w
  local swa_arms=""
  for w in $windows; do swa_arms="$swa_arms swa$w"; done
  [ "$dir" = "$R" ] || ln -sfn ../base "$dir/base"  # $dir is $R/<name>
  local ev="python evaluate.py --tasks $tasks --data-dir $data --out-dir $dir/eval --device $DEVICE $EVAL_ARGS"
  # Ordered so that a run cut short still answers the question: every SFT and its evaluation first, then RL
  # (SWA arms before SA, since the gap recovered needs SA-SFT, SWA-SFT and SWA-RL), then the extra evaluations.
  for arm in sa $swa_arms; do
    win=${arm#swa}; [ "$arm" = sa ] && win=none
    stage "$task-$arm-sft" python sft.py --ckpt "$R/base" --out "$dir/$arm-sft" --window "$win" \
      --data "$data/$task/train.jsonl" --device "$DEVICE" --eval-every 0 $sft_args $(resume "$dir/$arm-sft")
    stage "$task-eval-$arm-sft" $ev --ckpt "$dir/$arm-sft"
  done
  for arm in $swa_arms sa; do
    win=${arm#swa}; [ "$arm" = sa ] && win=none
    stage "$task-$arm-rl" python rl.py --ckpt "$dir/$arm-sft" --out "$dir/$arm-rl" --window "$win" \
      --task "$task" --data-dir "$data" --device "$DEVICE" --no-progress $rl_args $(resume "$dir/$arm-rl")
    stage "$task-eval-$arm-rl" $ev --ckpt "$dir/$arm-rl"
  done
  # the untrained model at every window (none = the model as it came), and the SA-trained model forced into
  # each SWA window (the cost of the window without training under it)
  for w in none $windows $BASE_WINDOWS; do stage "$task-eval-base-$w" $ev --ckpt "$dir/base" --window "$w"; done
  for w in $windows; do stage "$task-eval-sa-sft-$w" $ev --ckpt "$dir/sa-sft" --window "$w"; done
  python analysis/report.py "$dir"
}

if [ "$preset" = tiny ]; then
  stage data python -m data.synthetic --n-train "$N_TRAIN" --n-test "$N_TEST" --gaps "$GAPS" --max-value "$MAX_VALUE" \
    --out-dir "$R/data/synthetic"
  stage init python - "$R/init" <<'EOF'
import sys
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer
tok = toy_tokenizer()
cfg = Config(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=176, window=None)
save_checkpoint(sys.argv[1], Transformer(cfg).init_weights(0), tok, {"stage": "init"})
print(f"{sys.argv[1]}: {cfg}")
EOF
  # full attention on the synthetic train set stands in for a pretrained model
  stage pretrain python sft.py --ckpt "$R/init" --out "$R/base" --window none --data "$R/data/synthetic/train.jsonl" \
    --device cpu --val-size 64 --eval-every 0 --save-every 0 $PRE_ARGS
  SFT_ARGS="$SFT_ARGS --seed 1"
  experiment "$R" synthetic "$R/data" synthetic "$WINDOWS" "$SFT_ARGS" "$RL_ARGS"
else
  for t in gsm8k svamp asdiv; do
    [ -f "data/$t/test.jsonl" ] || stage prepare-data python -m data.prepare
  done
  stage convert python convert.py --src smollm2-135m-instruct --out "$R/base" --window none
  case " $PARTS " in *" gsm8k "*) experiment "$R" gsm8k data "$EVAL_TASKS" "$WINDOWS" "$SFT_ARGS" "$RL_ARGS";; esac
  case " $PARTS " in *" synthetic "*)
    mkdir -p "$R/synthetic"
    stage synthetic-data python -m data.synthetic --tokenizer "$R/base" --gaps "$GAPS" --n-train "$N_TRAIN" \
      --n-test "$N_TEST" --max-value "$MAX_VALUE" --out-dir "$R/synthetic/data/synthetic"
    experiment "$R/synthetic" synthetic "$R/synthetic/data" synthetic "$SYN_WINDOWS" "$SYN_SFT_ARGS" "$SYN_RL_ARGS";;
  esac
fi
stamp "done"
