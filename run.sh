#!/usr/bin/env bash
# The whole experiment for one preset: a full-attention starting model -> SFT -> RL -> evaluation, with full
# attention (SA) and with sliding windows (SWA), then REPORT.md (analysis/report.py) from the runs' own JSON.
#
#     bash run.sh tiny              # CPU, a few minutes: a toy byte-level model on a toy trace task
#     bash run.sh trace             # one GPU: SmolLM2-135M-Instruct on the trace task (data/trace.py), where the
#                                   # window binds inside the solution; SA vs SWA, controls, RL, the recall sweep
#     bash run.sh gsm8k             # one GPU: SmolLM2-135M-Instruct on GSM8K, the experiment's real-data arm
#     bash run.sh smollm2-gsm8k     # one GPU: SmolLM2-135M-Instruct on GSM8K and the synthetic task (earlier runs)
#
# Everything goes under runs/<preset>/ (or $RUNS/<preset>/): base/ (the starting model), one directory per
# training arm, eval/ (evaluate.py's greedy records and summary.json), eval-sampled/ (sampled at temperature 1),
# eval-passk/ (the trace preset: pass@k up to 64, PASSK_ARGS), and REPORT.md with its plots. Arms are named
# <attention>-<stage>[-<variant>][-seed<N>]: sa-sft, swa64-rl, swa64-sft-oracle (SFT on window-style traces only),
# swa64-sft-mix0 (on full-style traces only), swa64-rl-random (RL on a random reward), swa64-sft-more and
# sa-sft-more (more SFT, as much compute as RL: CONTROLS "more" and "sa-more"), swa64-rl-seed1 (seed 1; seed 0 has
# no suffix).
# Stopped runs continue: a stage that finished is skipped (runs/<preset>/done/), an interrupted training
# stage resumes from its last checkpoint, and evaluation skips the problems it already scored.
# `rm -rf runs/<preset>` starts over, and the same command can run in pieces, e.g. `timeout 600 bash run.sh
# trace` repeated. Any variable set in a preset below can be overridden from the environment, an empty value
# included: `SEEDS="0 1 2" CONTROLS= bash run.sh trace`. The controls, the SA model run under the windows and the
# recall sweep start from the first seed in SEEDS. Two run.sh processes can share a run directory when their
# stages differ, e.g. on one GPU: `SEEDS= bash run.sh trace` (the data only), then `SEEDS=1 CONTROLS=random
# bash run.sh trace` and `SEEDS=2 CONTROLS=more RECALL= bash run.sh trace` side by side.
set -euo pipefail
cd "$(dirname "$0")"

preset=${1:-}
case "$preset" in
  tiny)
    # A toy byte-level model (one token per character) on a toy trace task: 3 registers, 2-3 steps, no filler,
    # terse questions (no rules: the model learns them from the solutions). A full-style solution copies values
    # from up to two lines back (about 50 characters), a window-style one from one line back (about 36): a window
    # of 40 binds the first and not the second; 120 binds neither.
    : "${WINDOW=40}" "${CONTROL_WINDOW=120}" "${SINKS=4}"
    : "${TRACE_ARGS=--registers 3 --steps 2,3 --filler 0 --terse}" "${N_TRAIN=1800}" "${N_TEST=200}" "${MIX=0.2}"
    : "${SWEEP_ARGS=--registers 3 --steps 2,3 --filler 0,4,8,16,24 --n-test 60 --terse}"
    : "${DEVICE=cpu}"
    : "${MODEL=dim=64 n_layers=2 n_heads=4 n_kv_heads=2 hidden_dim=176}"   # the toy's shape (model.Config)
    # "pretraining": the toy copies values from the start after a few hundred steps and gets the sums right
    # after about nine hundred
    : "${PRE_ARGS=--steps 900 --lr 3e-3 --warmup-steps 20 --seq-len 512 --batch-size 8}"
    : "${SFT_ARGS=--steps 30 --lr 1e-3 --warmup-steps 3 --seq-len 512 --batch-size 8 --val-size 64}"
    : "${RL_ARGS=--steps 8 --prompts-per-step 16 --group-size 4 --max-new-tokens 160 --lr 3e-5 --warmup-steps 1
                  --eval-every 4 --eval-limit 32 --overlong-cache 0}"
    : "${EVAL_ARGS=--max-new-tokens 160 --batch-size 64}"
    : "${SAMPLED_ARGS=--samples 4 --temperature 1 --limit 40}"
    : "${MORE_SFT_ARGS=--steps 20 --lr 3e-4 --warmup-steps 1 --seq-len 512 --batch-size 8 --val-size 64}"
    : "${CONTROLS=oracle mix0 control-window}" "${SEEDS=0}" "${RL_ARMS=swa sa}"
    : "${RECALL=yes}"    # empty: no recall sweep (e.g. in a second run.sh on the same run directory)
    ;;
  trace)
    # SmolLM2-135M on the trace task: 3 registers, 4-9 steps, 24 filler tokens per step (SmolLM2 tokens). A
    # full-style solution copies values last written up to 124 tokens back (1.9 W at W = 64); its second
    # operands, which no line in between copies, up to 83 (1.3 W); a window-style one copies over at most 52;
    # a window of 192 binds neither. 4 attention sinks keep the converted model's perplexity near full
    # attention's (README). The sweep feeds fillers of 0-40 tokens: copy distances from 52 to 172.
    : "${WINDOW=64}" "${CONTROL_WINDOW=192}" "${SINKS=4}"
    : "${TRACE_ARGS=--registers 3 --steps 4,9 --filler 24}" "${N_TRAIN=4000}" "${N_TEST=1000}" "${MIX=0.2}"
    : "${SWEEP_ARGS=--registers 3 --steps 4,9 --filler 0,4,8,16,24,32,40 --n-test 350}"
    : "${DEVICE=cuda}"
    : "${SFT_ARGS=--epochs 2 --lr 1e-4 --warmup-steps 10 --seq-len 4096 --batch-size 8 --save-every 0}"
    : "${RL_ARGS=--steps 20 --prompts-per-step 64 --group-size 8 --max-new-tokens 512 --gen-batch 512
                  --batch-size 64 --lr 5e-6 --warmup-steps 2 --eval-every 0 --save-every 5 --overlong-cache 0}"
    : "${EVAL_ARGS=--max-new-tokens 512 --batch-size 1024}"
    : "${SAMPLED_ARGS=--samples 4 --temperature 1 --limit 250}"
    # pass@k up to 64 of each seed's SFT and RL arms (eval-passk/), after everything else; empty: none
    : "${PASSK_ARGS=--samples 64 --temperature 1 --limit 100}"
    # "more SFT": as many trained tokens as an RL arm (20 steps of 512 completions of prompt + ~400 tokens)
    : "${MORE_SFT_ARGS=--steps 150 --lr 3e-5 --warmup-steps 5 --seq-len 4096 --batch-size 8 --save-every 0}"
    : "${CONTROLS=oracle mix0 control-window}" "${SEEDS=0}" "${RL_ARMS=swa sa}"
    : "${RECALL=yes}"    # empty: no recall sweep (e.g. in a second run.sh on the same run directory)
    ;;
  gsm8k)
    # The secondary, real-data arm of the experiment: SmolLM2-135M on GSM8K, the instruction before the question
    # (the question ends the prompt), windows that bind inside a solution but hold the question, RL on the training
    # problems each SFT model solves sometimes but not always (16 samples each), a format-only reward control, and
    # window 64 with the old layout (instruction after the question) beside the new one: that confound's size.
    : "${WINDOWS=128 192}" "${SINKS=4}" "${SEEDS=0}" "${RL_ARMS=swa sa}" "${CONTROLS=format layout}"
    # GSM8K alone has 1,319 test problems, and SFT leaves SmolLM2-135M near 5% on it: SVAMP and ASDiv add 3,215
    : "${EVAL_TASKS=gsm8k,svamp,asdiv}"
    : "${DEVICE=cuda}"
    : "${SFT_ARGS=--epochs 2 --lr 1e-4 --warmup-steps 10 --seq-len 2048 --batch-size 16 --save-every 50}"
    : "${SOLVABLE=yes}"  # empty: RL draws from every training problem (dynamic sampling still drops dull groups)
    : "${SELECT_ARGS=--limit 1024 --samples 16 --temperature 1 --max-new-tokens 384 --batch-size 1024}"
    # --compile: decoding and training compiled, for speed (bench/README.md: the RL step, compiled)
    : "${RL_ARGS=--steps 60 --prompts-per-step 32 --group-size 16 --max-new-tokens 384 --gen-batch 512
                  --batch-size 32 --lr 5e-6 --warmup-steps 3 --eval-every 0 --save-every 10 --compile}"
    : "${EVAL_ARGS=--max-new-tokens 384 --batch-size 1024}"
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
    echo "usage: bash run.sh PRESET   (presets: tiny, trace, gsm8k, smollm2-gsm8k)" >&2
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
# --resume when an interrupted earlier invocation left a checkpoint of this training stage (a save cut between its
# two renames is put back first)
resume() {
  if [ ! -e "$1" ] && compgen -G "$1.old*" > /dev/null; then
    python -c 'import sys, model; model.recover_checkpoint(sys.argv[1])' "$1"
  fi
  if [ -f "$1/trainer_state.pt" ]; then echo --resume; fi
}
# sft_stage NAME FROM OUT DATA WINDOW [SFT FLAGS]: SFT of the checkpoint FROM on DATA (a JSONL) into OUT, resumed
# where an interrupted invocation left it
sft_stage() {
  local name=$1 from=$2 out=$3 data=$4 window=$5; shift 5
  stage "$name" python sft.py --ckpt "$from" --out "$out" --window "$window" --data "$data" --device "$DEVICE" \
    --eval-every 0 "$@" $(resume "$out")
}
# rl_stage NAME FROM OUT TASK DATA_DIR [RL FLAGS]: RL of the checkpoint FROM on TASK's training problems into OUT,
# resumed likewise
rl_stage() {
  local name=$1 from=$2 out=$3 task=$4 data=$5; shift 5
  stage "$name" python rl.py --ckpt "$from" --out "$out" --task "$task" --data-dir "$data" --device "$DEVICE" \
    --no-progress "$@" $(resume "$out")
}

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
    sft_stage "$task-$arm-sft" "$R/base" "$dir/$arm-sft" "$data/$task/train.jsonl" "$win" $sft_args
    stage "$task-eval-$arm-sft" $ev --ckpt "$dir/$arm-sft"
  done
  for arm in $swa_arms sa; do
    win=${arm#swa}; [ "$arm" = sa ] && win=none
    rl_stage "$task-$arm-rl" "$dir/$arm-sft" "$dir/$arm-rl" "$task" "$data" --window "$win" $rl_args
    stage "$task-eval-$arm-rl" $ev --ckpt "$dir/$arm-rl"
  done
  # the untrained model at every window (none = the model as it came), and the SA-trained model forced into
  # each SWA window (the cost of the window without training under it)
  for w in none $windows $BASE_WINDOWS; do stage "$task-eval-base-$w" $ev --ckpt "$dir/base" --window "$w"; done
  for w in $windows; do stage "$task-eval-sa-sft-$w" $ev --ckpt "$dir/sa-sft" --window "$w"; done
  python analysis/report.py "$dir"
}

# trace_experiment: the trace task (data/trace.py) from $R/base. The SFT data mixes a fraction $MIX of
# window-style traces into full-style ones (RL can only reinforce what the policy sometimes writes); the
# controls train on one style only (oracle: all window style; mix0: all full style) or under a window that
# binds nothing. Every SFT and RL arm is evaluated greedily (eval/) and sampled (eval-sampled/); the SA model is
# also run under the windows; the recall sweep measures how far back each model recalls a value.
trace_experiment() {
  local D=$R/data tok=$R/base seed s arm win
  local gen="python -m data.trace $TRACE_ARGS --n-train $N_TRAIN --n-test $N_TEST --test-style full --tokenizer $tok"
  stage trace-data $gen --window-style-fraction "$MIX" --out-dir "$D/trace"
  case " $CONTROLS " in *" oracle "*) stage trace-data-window $gen --window-style-fraction 1 --out-dir "$D/trace-window";; esac
  case " $CONTROLS " in *" mix0 "*) stage trace-data-full $gen --window-style-fraction 0 --out-dir "$D/trace-full";; esac
  stage trace-data-sweep python -m data.trace $SWEEP_ARGS --n-train 0 --test-style full --tokenizer "$tok" \
    --out-dir "$D/trace-sweep"
  [ -n "$SEEDS" ] || return 0  # SEEDS= only writes the data
  local ev="python evaluate.py --tasks trace --data-dir $D --device $DEVICE $EVAL_ARGS"
  # sft NAME WINDOW DATA SEED [FROM [SFT FLAGS]]: one SFT arm (from base/, or from the arm FROM) and its evaluations
  sft() {
    local name=$1 window=$2 data=$3 seed=$4 from=${5:-$tok} args=${6:-$SFT_ARGS}
    sft_stage "$name" "$from" "$R/$name" "$D/$data/train.jsonl" "$window" --sinks "$SINKS" --seed "$seed" $args
    stage "eval-$name" $ev --out-dir "$R/eval" --ckpt "$R/$name"
    stage "eval-sampled-$name" $ev --out-dir "$R/eval-sampled" --ckpt "$R/$name" $SAMPLED_ARGS
  }
  # rl NAME FROM WINDOW SEED [RL FLAGS]: one RL arm from the SFT arm FROM, and its evaluations
  rl() {
    local name=$1 from=$2 window=$3 seed=$4; shift 4
    rl_stage "$name" "$R/$from" "$R/$name" trace "$D" --window "$window" --seed "$seed" $RL_ARGS "$@"
    stage "eval-$name" $ev --out-dir "$R/eval" --ckpt "$R/$name"
    stage "eval-sampled-$name" $ev --out-dir "$R/eval-sampled" --ckpt "$R/$name" $SAMPLED_ARGS
  }
  # Ordered so that a run cut short still answers the question: both SFT arms, then both RL arms, seed by seed,
  # then the controls and the extra evaluations.
  for seed in $SEEDS; do
    s=$([ "$seed" = 0 ] || echo "-seed$seed")
    sft "sa-sft$s" none trace "$seed"
    sft "swa$WINDOW-sft$s" "$WINDOW" trace "$seed"
    for arm in $RL_ARMS; do
      win=$([ "$arm" = sa ] && echo none || echo "$WINDOW")
      arm=$([ "$arm" = sa ] && echo sa || echo "swa$WINDOW")
      rl "$arm-rl$s" "$arm-sft$s" "$win" "$seed"
    done
  done
  # The rest starts from the first seed's arms and carries its suffix (none for seed 0).
  seed=${SEEDS%% *}; s=$([ "$seed" = 0 ] || echo "-seed$seed")
  for w in $WINDOW $CONTROL_WINDOW; do
    stage "eval-sa-sft$s-$w" $ev --out-dir "$R/eval" --ckpt "$R/sa-sft$s" --window "$w"
  done
  case " $CONTROLS " in *" oracle "*) sft "swa$WINDOW-sft-oracle$s" "$WINDOW" trace-window "$seed";; esac
  case " $CONTROLS " in *" mix0 "*) sft "swa$WINDOW-sft-mix0$s" "$WINDOW" trace-full "$seed";; esac
  case " $CONTROLS " in *" control-window "*) sft "swa$CONTROL_WINDOW-sft$s" "$CONTROL_WINDOW" trace "$seed";; esac
  case " $CONTROLS " in *" random "*)
    rl "swa$WINDOW-rl-random$s" "swa$WINDOW-sft$s" "$WINDOW" "$seed" --reward random;; esac
  case " $CONTROLS " in *" more "*)
    sft "swa$WINDOW-sft-more$s" "$WINDOW" trace "$seed" "$R/swa$WINDOW-sft$s" "$MORE_SFT_ARGS";; esac
  # the same extra SFT for full attention: the gap between the two "more SFT" arms is the gap at matched compute
  case " $CONTROLS " in *" sa-more "*) sft "sa-sft-more$s" none trace "$seed" "$R/sa-sft$s" "$MORE_SFT_ARGS";; esac
  if [ -n "${PASSK_ARGS:-}" ]; then
    for seed in $SEEDS; do
      s=$([ "$seed" = 0 ] || echo "-seed$seed")
      for arm in sa "swa$WINDOW"; do
        stage "eval-passk-$arm-sft$s" $ev --out-dir "$R/eval-passk" --ckpt "$R/$arm-sft$s" $PASSK_ARGS
        case " $RL_ARMS " in *" ${arm%%[0-9]*} "*)
          stage "eval-passk-$arm-rl$s" $ev --out-dir "$R/eval-passk" --ckpt "$R/$arm-rl$s" $PASSK_ARGS;; esac
      done
    done
    seed=${SEEDS%% *}; s=$([ "$seed" = 0 ] || echo "-seed$seed")
  fi
  if [ -n "$RECALL" ]; then
    local mix0=$R/swa$WINDOW-sft-mix0$s
    stage "recall$s" python analysis/recall.py --data "$D/trace-sweep/test.jsonl" --out "$R/recall.json" \
      --device "$DEVICE" --ckpt "$R/sa-sft$s" --ckpt "$R/swa$WINDOW-sft$s" $([ -d "$mix0" ] && echo --ckpt "$mix0")
    stage "recall-sa-window$s" python analysis/recall.py --data "$D/trace-sweep/test.jsonl" --out "$R/recall.json" \
      --device "$DEVICE" --ckpt "$R/sa-sft$s" --window "$WINDOW"
  fi
  python analysis/report.py "$R"
}

# gsm8k_experiment: GSM8K from $R/base (the `gsm8k` preset). Per seed: SA and SWA SFT at each window, each
# evaluated greedily on the test sets of EVAL_TASKS (accuracy, parse rate, truncation), and the SA model run under
# each window; then, per RL arm, its SFT model sampled on training problems (eval-train/) and RL on those it solved
# sometimes. Then the controls.
gsm8k_experiment() {
  local D=data seed s w arm a
  local ev="python evaluate.py --data-dir $D --device $DEVICE --out-dir $R/eval $EVAL_ARGS"
  # the benchmarks an arm trained on DATA (gsm8k or gsm8k-instruction-after) is evaluated on: EVAL_TASKS in its layout
  eval_tasks() { local layout=${1#gsm8k}; echo "${EVAL_TASKS//,/$layout,}$layout"; }
  # sft_arm NAME WINDOW DATA SEED: SFT from base/ on $D/DATA/train.jsonl, evaluated
  sft_arm() {
    sft_stage "$1" "$R/base" "$R/$1" "$D/$3/train.jsonl" "$2" --sinks "$SINKS" --seed "$4" $SFT_ARGS
    stage "eval-$1" $ev --tasks "$(eval_tasks "$3")" --ckpt "$R/$1"
  }
  # rl_arm NAME FROM SEED [RL FLAGS]: RL from the SFT arm FROM on the problems it solved sometimes, evaluated
  rl_arm() {
    local name=$1 from=$2 seed=$3 pick=(); shift 3
    if [ -n "$SOLVABLE" ]; then
      stage "select-$from" python evaluate.py --tasks gsm8k --split train --data-dir "$D" --device "$DEVICE" \
        --out-dir "$R/eval-train" --ckpt "$R/$from" $SELECT_ARGS
      pick=(--solvable-from "$R/eval-train/$from/gsm8k-train.jsonl")
    fi
    rl_stage "$name" "$R/$from" "$R/$name" gsm8k "$D" --seed "$seed" "${pick[@]}" $RL_ARGS "$@"
    stage "eval-$name" $ev --tasks "$EVAL_TASKS" --ckpt "$R/$name"
  }
  for seed in $SEEDS; do
    s=$([ "$seed" = 0 ] || echo "-seed$seed")
    sft_arm "sa-sft$s" none gsm8k "$seed"
    for w in $WINDOWS; do sft_arm "swa$w-sft$s" "$w" gsm8k "$seed"; done
    for w in $WINDOWS; do  # the SA model under each window (its cost without training under it): cheap, so before RL
      stage "eval-sa-sft$s-$w" $ev --tasks "$EVAL_TASKS" --ckpt "$R/sa-sft$s" --window "$w" --sinks "$SINKS"
    done
    for arm in $RL_ARMS; do
      for a in $([ "$arm" = sa ] && echo sa || for w in $WINDOWS; do echo "swa$w"; done); do
        rl_arm "$a-rl$s" "$a-sft$s" "$seed"
      done
    done
  done
  seed=${SEEDS%% *}; s=$([ "$seed" = 0 ] || echo "-seed$seed"); w=${WINDOWS%% *}
  case " $CONTROLS " in *" format "*) rl_arm "swa$w-rl-format$s" "swa$w-sft$s" "$seed" --reward format;; esac
  case " $CONTROLS " in *" layout "*)
    sft_arm "swa64-sft$s" 64 gsm8k "$seed"
    sft_arm "swa64-sft-after$s" 64 gsm8k-instruction-after "$seed";; esac
  python analysis/report.py "$R"
}

if [ "$preset" = tiny ]; then
  stage init python - "$R/init" $MODEL <<'EOF'
import sys
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer
tok = toy_tokenizer()
shape = {k: int(v) for k, v in (a.split("=") for a in sys.argv[2:])}
cfg = Config(vocab_size=tok.vocab_size, window=None, **shape)
save_checkpoint(sys.argv[1], Transformer(cfg).init_weights(0), tok, {"stage": "init"})
print(f"{sys.argv[1]}: {cfg}")
EOF
  # full attention on the training problems, half in each style, stands in for a pretrained model (the same
  # seed as the experiment's data, so its test problems stay unseen)
  stage pretrain-data python -m data.trace $TRACE_ARGS --n-train "$N_TRAIN" --n-test "$N_TEST" \
    --window-style-fraction 0.5 --out-dir "$R/data/pretrain"
  stage pretrain python sft.py --ckpt "$R/init" --out "$R/base" --window none --data "$R/data/pretrain/train.jsonl" \
    --device cpu --val-size 64 --eval-every 0 --save-every 0 $PRE_ARGS
  trace_experiment
elif [ "$preset" = trace ]; then
  stage convert python convert.py --src smollm2-135m-instruct --out "$R/base" --window none
  trace_experiment
elif [ "$preset" = gsm8k ]; then
  [ -f data/gsm8k-instruction-after/test.jsonl ] || stage prepare-data python -m data.prepare --instruction-after
  stage convert python convert.py --src smollm2-135m-instruct --out "$R/base" --window none
  gsm8k_experiment
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
