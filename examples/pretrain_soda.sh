#!/usr/bin/env bash
# Pretrain a SODA model with the paper's recipe (SODA_SPEC.md section 4) on GPU nodes.
#
#   bash examples/pretrain_soda.sh SIZE [more pretrain_soda.py flags]     SIZE: 135m | 600m | 1.7b | 4b
#   bash examples/pretrain_1.7b.sh                                        # the same, one wrapper per size
#   PRINT_ONLY=1 bash examples/pretrain_soda.sh 4b                        # print the command, run nothing
#   bash examples/pretrain_soda.sh 600m --dry-run                         # the same
#
# Recipe (every value below is an environment variable; defaults are the paper's):
#   global batch 512 x 4096 tokens, 500B tokens (238,419 steps), peak LR
#   0.003 x sqrt(batch/256) x sqrt(1024/width) with width = hidden, except 1024 for the 135M as the
#   authors did (4.24e-3 at 135M and 600M, 3.0e-3 at 1.7B, 2.68e-3 at 4B: docs/models.md),
#   Cautious Adam with AdamC weight decay, betas 0.98/0.98, eps 1e-16, weight decay 0.033 (none
#   on norms and the input embedding: the trainer's rule), grad clip 1.0, z-loss 1e-4, Llama-3
#   RoPE and Levanter's initialisation (the presets' defaults), WSD schedule: 10% linear
#   warmup, constant, linear decay to 0 over the last 20%; bf16 (FP8=1 adds FP8 GEMMs through
#   Transformer Engine); document masking at every EOS (the trainer's default).
#   Data: 95% speech+transcripts split 131:73:37 across YODAS2-en / Emilia-YODAS-EN / Emilia-EN,
#   5% text (Nemotron-CC high quality), as one Megatron blend (--data-path W1 P1 W2 P2 ...).
#
# Parallel layout per size for nodes of 8 x H100 80GB (override with TP, PP, MICRO_BATCH_SIZE):
#   135m  TP1 PP1 micro-batch 8     600m  TP1 PP1 micro-batch 4
#   1.7b  TP1 PP1 micro-batch 2     4b    TP1 PP1 micro-batch 1
#   all with the distributed optimizer; data parallel = GPUs / (TP x PP).  The models are small
#   enough for pure data parallelism; what limits the micro-batch of the small ones is the
#   output layer's logits (micro-batch x 4096 x 144,768 vocabulary entries, plus an fp32 copy
#   in the loss).  The global batch of 512 must be a multiple of micro-batch x DP: 8 GPUs give
#   8-64 micro-batches per step, 64 GPUs (8 nodes) 1-8.  On 40 GB GPUs, halve the micro-batch
#   (4b: TP=2, which also turns on --sequence-parallel).
#
# Nodes: one torchrun per node.  Single node by default; several nodes with NNODES, NODE_RANK,
# MASTER_ADDR (and MASTER_PORT), or under Slurm from the allocation:
#   srun --nodes 8 --ntasks-per-node 1 --gpus-per-node 8 bash examples/pretrain_soda.sh 1.7b
# For long jobs use slurm/pretrain_soda.sbatch (requeue on preemption, automatic resume): it
# takes this recipe's pretrain_soda.py flags as EXTRA_ARGS (the later flag wins), e.g.
#   MODEL_SIZE=1.7b EXTRA_ARGS="$(PRINT_ARGS=1 SAVE_DIR= bash examples/pretrain_soda.sh 1.7b)" \
#     sbatch --nodes 8 slurm/pretrain_soda.sbatch
# (PRINT_ARGS=1 prints the flags only, space-separated: paths must not contain spaces.)
#
# Re-running the same command resumes from the latest checkpoint in SAVE_DIR.
set -euo pipefail

usage() { sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "pretrain_soda.sh: error: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE=${1:-${MODEL_SIZE:-}}
[[ -n $SIZE ]] || { usage >&2; exit 2; }
[[ $SIZE == -h || $SIZE == --help ]] && { usage; exit 0; }
shift || true
ARGS=()
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then PRINT_ONLY=1; else ARGS+=("$arg"); fi
done

case $SIZE in  # the width in the LR rule (the authors used 1024 for the 135M), TP, PP, micro-batch
  135m) LR_WIDTH=1024; L_TP=1; L_PP=1; L_MBS=8 ;;
  600m) LR_WIDTH=1024; L_TP=1; L_PP=1; L_MBS=4 ;;
  1.7b) LR_WIDTH=2048; L_TP=1; L_PP=1; L_MBS=2 ;;
  4b)   LR_WIDTH=2560; L_TP=1; L_PP=1; L_MBS=1 ;;
  *) die "unknown size '$SIZE' (135m | 600m | 1.7b | 4b; 'tiny' is examples/quickstart.sh's)" ;;
esac

# --- paths (must be visible on every node) -----------------------------------------------------
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TORCHRUN=${TORCHRUN:-$ROOT/.venv/bin/torchrun}
TOKENIZER=${TOKENIZER:-/data/soda/tokenizer.json}  # the one given to preprocess_data.py
NUM_CODEBOOKS=${NUM_CODEBOOKS:-8}
DATA_ROOT=${DATA_ROOT:-/data/soda/shards}          # preprocess_data.py --output-prefix DATA_ROOT/NAME
YODAS2_EN=${YODAS2_EN:-$DATA_ROOT/yodas2_en_train}                # with --valid-fraction: NAME_train/_valid
EMILIA_YODAS_EN=${EMILIA_YODAS_EN:-$DATA_ROOT/emilia_yodas_en_train}
EMILIA_EN=${EMILIA_EN:-$DATA_ROOT/emilia_en_train}
TEXT=${TEXT:-$DATA_ROOT/nemotron_cc_hq}
# held-out speech (SODA's scaling-law target); VALID_DATA_PATH="" splits --data-path by --split
VALID_DATA_PATH=${VALID_DATA_PATH-$DATA_ROOT/yodas2_en_valid $DATA_ROOT/emilia_yodas_en_valid $DATA_ROOT/emilia_en_valid}
RUN_NAME=${RUN_NAME:-soda-$SIZE}
RUN_DIR=${RUN_DIR:-$ROOT/runs/$RUN_NAME}
SAVE_DIR=${SAVE_DIR-$RUN_DIR/checkpoints}          # empty: no checkpoints
METRICS_JSONL=${METRICS_JSONL:-$RUN_DIR/metrics.jsonl}
TENSORBOARD_DIR=${TENSORBOARD_DIR-$RUN_DIR/tensorboard}
DATA_CACHE_PATH=${DATA_CACHE_PATH:-$RUN_DIR/data_cache}  # megatron's sample indices

# --- data blend: 95% speech (131:73:37 by tokens) + 5% text -----------------------------------
SPEECH_WEIGHT=${SPEECH_WEIGHT:-0.95}
SPEECH_SPLIT=${SPEECH_SPLIT:-131:73:37}            # YODAS2-en : Emilia-YODAS-EN : Emilia-EN
if [[ -z ${DATA_PATH:-} ]]; then
  IFS=: read -r W_Y W_EY W_E <<<"$SPEECH_SPLIT"
  DATA_PATH=$(awk -v s="$SPEECH_WEIGHT" -v a="$W_Y" -v b="$W_EY" -v c="$W_E" \
    -v pa="$YODAS2_EN" -v pb="$EMILIA_YODAS_EN" -v pc="$EMILIA_EN" -v pt="$TEXT" 'BEGIN {
      t = a + b + c; printf "%.6f %s %.6f %s %.6f %s", s*a/t, pa, s*b/t, pb, s*c/t, pc
      if (1 - s > 0) printf " %.6f %s", 1 - s, pt }')
fi

# --- recipe ------------------------------------------------------------------------------------
SEQ_LENGTH=${SEQ_LENGTH:-4096}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-512}
TRAIN_TOKENS=${TRAIN_TOKENS:-500000000000}           # 500B
TRAIN_ITERS=${TRAIN_ITERS:-$(awk -v t="$TRAIN_TOKENS" -v b="$GLOBAL_BATCH_SIZE" -v s="$SEQ_LENGTH" \
  'BEGIN { n = t / (b * s); printf "%d", (n == int(n)) ? n : int(n) + 1 }')}
LR=${LR:-$(awk -v b="$GLOBAL_BATCH_SIZE" -v d="$LR_WIDTH" 'BEGIN { printf "%.4g", 0.003 * sqrt(b / 256) * sqrt(1024 / d) }')}
MIN_LR=${MIN_LR:-0}
LR_WARMUP_FRACTION=${LR_WARMUP_FRACTION:-0.1}
LR_WSD_DECAY_FRACTION=${LR_WSD_DECAY_FRACTION:-0.2}
ADAM_BETA1=${ADAM_BETA1:-0.98}
ADAM_BETA2=${ADAM_BETA2:-0.98}
ADAM_EPS=${ADAM_EPS:-1e-16}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.033}
CLIP_GRAD=${CLIP_GRAD:-1.0}
Z_LOSS_WEIGHT=${Z_LOSS_WEIGHT:-1e-4}
SEED=${SEED:-1}

# --- precision and parallelism -----------------------------------------------------------------
DEVICE=${DEVICE:-cuda}                             # cpu: only for checking this script (fp32, gloo)
PRECISION=${PRECISION-auto}                        # auto: --bf16 on cuda, fp32 on cpu
FP8=${FP8:-0}                                      # 1: --fp8-format hybrid (needs Transformer Engine)
FP8_RECIPE=${FP8_RECIPE:-delayed}
TP=${TP:-$L_TP}
PP=${PP:-$L_PP}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-$L_MBS}
DISTRIBUTED_OPTIMIZER=${DISTRIBUTED_OPTIMIZER:-1}
OVERLAP=${OVERLAP:-0}                              # 1: --overlap-grad-reduce --overlap-param-gather
                                                   # (Megatron-LM's usual GPU setting; see README)
RECOMPUTE=${RECOMPUTE:-}                           # e.g. "selective" or "full"

# --- logging, evaluation, checkpoints ----------------------------------------------------------
LOG_INTERVAL=${LOG_INTERVAL:-10}
EVAL_INTERVAL=${EVAL_INTERVAL:-1000}
EVAL_ITERS=${EVAL_ITERS:-10}
SAVE_INTERVAL=${SAVE_INTERVAL:-1000}
WANDB_PROJECT=${WANDB_PROJECT:-}
EXTRA_ARGS=${EXTRA_ARGS:-}                         # more pretrain_soda.py flags (word-split)

# --- nodes -------------------------------------------------------------------------------------
if [[ -n ${SLURM_JOB_NODELIST:-} && -z ${NNODES:-} ]]; then
  NNODES=${SLURM_NNODES:-1}
  NODE_RANK=${SLURM_NODEID:-0}
  MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
  MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 10000))}
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z ${NPROC_PER_NODE:-} ]]; then
  if [[ $DEVICE == cpu ]]; then NPROC_PER_NODE=1
  else NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
  if [[ ${PRINT_ONLY:-0} == 1 || ${PRINT_ARGS:-0} == 1 ]] && [[ ${NPROC_PER_NODE:-0} == 0 ]]; then
    NPROC_PER_NODE=8  # printing only: assume one 8-GPU node
  fi
fi
[[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]] ||
  die "no GPU found (nvidia-smi): set NPROC_PER_NODE, run on a GPU node, or PRINT_ONLY=1 to print the command"
WORLD=$((NNODES * NPROC_PER_NODE))
((WORLD % (TP * PP) == 0)) || die "$WORLD GPUs are not divisible by TP=$TP x PP=$PP"
DP=$((WORLD / (TP * PP)))
((GLOBAL_BATCH_SIZE % (MICRO_BATCH_SIZE * DP) == 0)) ||
  die "global batch $GLOBAL_BATCH_SIZE is not a multiple of micro-batch $MICRO_BATCH_SIZE x DP $DP"

# --- the command -------------------------------------------------------------------------------
read -r -a DATA_ARGS <<<"$DATA_PATH"
read -r -a VALID_ARGS <<<"$VALID_DATA_PATH"
read -r -a EXTRA <<<"$EXTRA_ARGS"
if [[ $PRECISION == auto ]]; then
  if [[ $DEVICE == cuda ]]; then PRECISION=--bf16; else PRECISION=; fi
fi
read -r -a PRECISION_ARGS <<<"$PRECISION"
TRAIN_ARGS=(
  --device "$DEVICE" --model-size "$SIZE" --tokenizer "$TOKENIZER" --num-codebooks "$NUM_CODEBOOKS"
  --data-path "${DATA_ARGS[@]}" --data-cache-path "$DATA_CACHE_PATH"
  --seq-length "$SEQ_LENGTH" --micro-batch-size "$MICRO_BATCH_SIZE" --global-batch-size "$GLOBAL_BATCH_SIZE"
  --train-iters "$TRAIN_ITERS" --seed "$SEED"
  --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style WSD --lr-warmup-fraction "$LR_WARMUP_FRACTION"
  --lr-wsd-decay-style linear --lr-wsd-decay-fraction "$LR_WSD_DECAY_FRACTION"
  --adam-beta1 "$ADAM_BETA1" --adam-beta2 "$ADAM_BETA2" --adam-eps "$ADAM_EPS"
  --weight-decay "$WEIGHT_DECAY" --clip-grad "$CLIP_GRAD" --z-loss-weight "$Z_LOSS_WEIGHT"
  --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
  --log-interval "$LOG_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
  --metrics-jsonl "$METRICS_JSONL"
)
if ((${#VALID_ARGS[@]})); then TRAIN_ARGS+=(--valid-data-path "${VALID_ARGS[@]}"); fi
TRAIN_ARGS+=("${PRECISION_ARGS[@]}")
if [[ $FP8 == 1 ]]; then TRAIN_ARGS+=(--fp8-format hybrid --fp8-recipe "$FP8_RECIPE"); fi
if ((TP > 1)); then TRAIN_ARGS+=(--sequence-parallel); fi
if [[ $DISTRIBUTED_OPTIMIZER == 1 ]] && ((DP > 1)); then TRAIN_ARGS+=(--use-distributed-optimizer); fi
if [[ $OVERLAP == 1 ]]; then
  TRAIN_ARGS+=(--overlap-grad-reduce)
  if [[ $DISTRIBUTED_OPTIMIZER == 1 ]] && ((DP > 1)); then TRAIN_ARGS+=(--overlap-param-gather); fi
fi
if [[ -n $RECOMPUTE ]]; then TRAIN_ARGS+=(--recompute-granularity "$RECOMPUTE"); fi
if [[ -n $SAVE_DIR ]]; then TRAIN_ARGS+=(--save "$SAVE_DIR" --save-interval "$SAVE_INTERVAL"); fi
if [[ -n $TENSORBOARD_DIR ]]; then TRAIN_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR"); fi
if [[ -n $WANDB_PROJECT ]]; then TRAIN_ARGS+=(--wandb-project "$WANDB_PROJECT" --wandb-exp-name "$RUN_NAME"); fi
TRAIN_ARGS+=("${EXTRA[@]}" "${ARGS[@]}")

CMD=("$TORCHRUN" --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$ROOT/pretrain_soda.py" "${TRAIN_ARGS[@]}")

if [[ ${PRINT_ARGS:-0} == 1 ]]; then echo "${TRAIN_ARGS[*]}"; exit 0; fi
echo "# SODA $SIZE: $WORLD processes (TP $TP, PP $PP, DP $DP), micro-batch $MICRO_BATCH_SIZE, global batch" \
     "$GLOBAL_BATCH_SIZE x $SEQ_LENGTH, $TRAIN_ITERS steps, peak LR $LR" >&2
if [[ ${PRINT_ONLY:-0} == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
[[ -x $TORCHRUN ]] || die "no torchrun at $TORCHRUN: set up .venv (scripts/setup_env.sh) or set TORCHRUN"
[[ -f $TOKENIZER || -d $TOKENIZER ]] || die "TOKENIZER=$TOKENIZER not found (the tokenizer given to preprocess_data.py)"
mkdir -p "$RUN_DIR"
if [[ $DEVICE == cuda ]]; then export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}; fi
if [[ -z ${OMP_NUM_THREADS:-} ]]; then
  OMP_NUM_THREADS=$(($(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1))
  export OMP_NUM_THREADS
fi
exec "${CMD[@]}"
