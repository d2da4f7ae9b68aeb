"""Count-based reference points for the held-out speech NLL of the study (nats per audio token).

    python docs/scaling_study/ngram_baseline.py SHARDS_DIR --tokenizer TOKENIZER_JSON

Trains on SHARDS/speech_train and scores the audio tokens of SHARDS/speech_valid with
(1) a unigram per codebook (the codebook of each position is known from the layout) and
(2) a bigram on the previous token, interpolated with (1) (weight n / (n + 50), n = count of the
previous token).  Add-0.5 smoothing.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def load(prefix: str) -> np.ndarray:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--num-codebooks", type=int, default=8)
    args = ap.parse_args()

    import scipy.sparse as sp

    from megatron_soda.tokenizer import SodaTokenizer

    lay = SodaTokenizer(args.tokenizer, num_codebooks=args.num_codebooks).layout
    vocab, off, size = lay.vocab_size, lay.audio_offset, lay.codebook_size
    train = load(os.path.join(args.shards, "speech_train"))
    valid = load(os.path.join(args.shards, "speech_valid"))
    counts = np.bincount(train, minlength=vocab).astype(float) + 0.5
    unigram = np.zeros(vocab)
    for k in range(lay.num_codebooks):
        ids = slice(off + k * size, off + (k + 1) * size)
        unigram[ids] = counts[ids] / counts[ids].sum()
    prev, nxt = valid[:-1], valid[1:]
    audio = nxt >= off
    uni_nll = float(-np.log(unigram[nxt[audio]]).mean())
    pairs = sp.coo_matrix(
        (np.ones(len(train) - 1), (train[:-1], train[1:])), shape=(vocab, vocab)
    ).tocsr()
    row = np.asarray(pairs.sum(axis=1)).ravel()[prev[audio]]
    hits = np.asarray(pairs[prev[audio], nxt[audio]]).ravel()
    lam = row / (row + 50.0)
    p = lam * hits / np.maximum(row, 1.0) + (1.0 - lam) * unigram[nxt[audio]]
    print(json.dumps({"held_out_audio_tokens": int(audio.sum()),
                      "unigram_per_codebook_nll": round(uni_nll, 4),
                      "bigram_interpolated_nll": round(float(-np.log(p).mean()), 4),
                      "uniform_nll": round(float(np.log(size)), 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
