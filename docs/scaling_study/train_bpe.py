"""Train the study's small byte-level BPE (no special tokens of its own) on the sample text.

    python docs/scaling_study/train_bpe.py --vocab-size 2048 --out DIR/tokenizer.json \
        SAMPLE/text.jsonl SAMPLE/speech.jsonl

Reads the "text" field of every JSONL line (web-text documents and speech transcripts).  The
unified SODA vocabulary is then this BPE + 2 (BOS/EOS added by SodaTokenizer) + 4 markers +
codebooks x 2048; the script prints it for `--num-codebooks`.
"""

from __future__ import annotations

import argparse
import json
import os


def iter_texts(paths: list[str]):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = json.loads(line).get("text")
                if text:
                    yield text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="JSONL files with a 'text' field")
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--num-codebooks", type=int, default=8)
    args = ap.parse_args()

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from megatron_soda.tokenizer import SodaTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(args.inputs), trainer)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tok.save(args.out)
    soda = SodaTokenizer(args.out, num_codebooks=args.num_codebooks)
    print(json.dumps({"tokenizer": args.out, "bpe_vocab": tok.get_vocab_size(),
                      "soda_vocab_size": soda.vocab_size}))  # fmt: skip


if __name__ == "__main__":
    main()
