#!/usr/bin/env bash
# The small CPU IsoFLOP study of docs/scaling_study/README.md, end to end, from a fresh checkout:
#
#   1. speech (espeak-ng reading public-domain Shakespeare, ~2.9 h) + web-style text
#   2. a 2,048-token byte-level BPE trained on that text (SODA vocab 18,438 with 8 codebooks)
#   3. shards: random-weight full-size Mimi (random:full), 8 codebooks, both interleavings,
#      2% of recordings held out; text shard
#   4. plan (rule.yaml) -> 5. launch --execute (20 runs, one after another, DP=2 on 2 cores)
#   6. collect (held-out speech NLL, loss_audio) -> fit -> predict (+ hold-out check), count-based
#      unigram/bigram reference losses, and a markdown summary (summary.md)
#
# Scratch (samples, shards, runs, logs) goes to $WORK (default work_dirs/scaling_study, git-
# ignored); the small results (CSV, JSON, plots) to $OUT (default docs/scaling_study).
# Every stage is skipped when its output exists, and launch --execute skips finished runs, so
# re-running resumes.  Stage times are appended to $WORK/timing.log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
PY=.venv/bin/python
W=${WORK:-work_dirs/scaling_study}
OUT=${OUT:-docs/scaling_study}
BUDGETS=${BUDGETS:-"1e12 2e12 4e12 8e12"}
RULE=docs/scaling_study/rule.yaml
TOK=$W/tokenizer/tokenizer.json
S=$W/shards
export PYTHONWARNINGS=ignore
mkdir -p "$W" "$OUT"
stamp() { echo "$(date -u +%FT%TZ) $(date +%s) load=$(cut -d' ' -f1-3 /proc/loadavg) $*" | tee -a "$W/timing.log"; }
stamp "start on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

echo "== 1. speech + text"
if [ ! -f "$W/sample/sample.json" ]; then
  $PY tools/preprocess/make_sample_data.py --out "$W/sample" --formats jsonl,text \
    --recordings 160 --utterances-per-recording 10 --text-documents 4000 --text-source sdist --seed 0
fi
stamp "data done"

echo "== 2. tokenizer: 2,048-token byte-level BPE"
if [ ! -f "$TOK" ]; then
  $PY docs/scaling_study/train_bpe.py --vocab-size 2048 --num-codebooks 8 --out "$TOK" \
    "$W/sample/text.jsonl" "$W/sample/speech.jsonl"
fi
V=$($PY -c "from megatron_soda.tokenizer import SodaTokenizer as T; print(T('$TOK', num_codebooks=8).vocab_size)")
echo "SODA vocabulary: $V"

echo "== 3. preprocess: random-weight full-size Mimi, 8 codebooks, both interleavings, 2% held out"
if [ ! -f "$S/speech_train.idx" ]; then
  $PY tools/preprocess/preprocess_data.py --input "$W/sample/speech.jsonl" --input-format jsonl \
    --output-prefix "$S/speech" --tokenizer "$TOK" --codec random:full --num-codebooks 8 \
    --interleave both --valid-fraction 0.02 --log-level WARNING
fi
if [ ! -f "$S/text.idx" ]; then
  $PY tools/preprocess/preprocess_data.py --input "$W/sample/text.jsonl" --input-format text \
    --output-prefix "$S/text" --tokenizer "$TOK" --log-level WARNING
fi
stamp "shards done"

echo "== 4. plan"
# shellcheck disable=SC2086  # BUDGETS is a list
$PY -m megatron_soda.scaling plan --rule "$RULE" --vocab-size "$V" --budgets $BUDGETS | tee "$OUT/plan.txt"

echo "== 5. launch and run here, one run after another (2 processes = DP 2 per run)"
export DATA_PATH="0.95 $S/speech_train 0.05 $S/text"  # SODA's 95% speech / 5% text blend
stamp "sweep start"
# shellcheck disable=SC2086
$PY -m megatron_soda.scaling launch --rule "$RULE" --vocab-size "$V" --budgets $BUDGETS \
  --out "$W/runs" --launcher ".venv/bin/torchrun --standalone --nproc_per_node 2" \
  --micro-batch-size 0 --data-parallel 2 --tokenizer "$TOK" --eval-samples 128 --omit-flag=--save \
  --extra-args "--device cpu --valid-data-path $S/speech_valid --data-cache-path $W/cache --log-interval 10 --seed 1" \
  --execute
stamp "sweep done"

echo "== 6. collect (held-out speech NLL), fit, predict"
$PY -m megatron_soda.scaling collect "$W/runs" --loss-field loss_audio --out "$OUT/results.csv"
$PY -m megatron_soda.scaling fit --results "$OUT/results.csv" --plot-dir "$OUT" --out "$OUT/fit.json" >/dev/null
$PY -m megatron_soda.scaling predict --results "$OUT/results.csv" --budgets 8e13 8e14 \
  --holdout-largest --plot-dir "$OUT/holdout" --out "$OUT/predict.json" >/dev/null
$PY docs/scaling_study/ngram_baseline.py "$S" --tokenizer "$TOK" | tee "$OUT/ngram_baseline.json"
$PY docs/scaling_study/summarize.py "$W/runs" "$OUT" | tee "$OUT/summary.md"
stamp "all done"
