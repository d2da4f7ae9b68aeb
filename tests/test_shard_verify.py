"""The trainer's shard checks against damaged, hand-crafted and stale shards: every index entry,
BOS/EOS placement and the id range (with or without PREFIX.stats.json), and stats that describe
other shards than the ones beside them.  Shards are written here byte by byte (the ``.idx``
layout is megatron's: header, int32 lengths, int64 byte pointers, int64 document indices), so
the expectations do not come from the code under test."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from megatron_soda.format import ShardError
from megatron_soda.format import shards as shard_format
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.training.data_checks import DataError, check_prefix, check_prefixes


@pytest.fixture(scope="module")
def tok(small_bpe_path):
    return SodaTokenizer(small_bpe_path, num_codebooks=4)


def write_raw(prefix: str, tokens: np.ndarray, lengths: list[int], pointers: list[int] | None = None,
              docs: list[int] | None = None) -> str:
    """PREFIX.bin (int32 ``tokens``) and a PREFIX.idx holding exactly the entries given."""
    n = len(lengths)
    if pointers is None:
        pointers = [4 * sum(lengths[:i]) for i in range(n)]
    if docs is None:
        docs = list(range(n + 1))
    np.asarray(tokens, np.int32).tofile(prefix + ".bin")
    with open(prefix + ".idx", "wb") as f:
        f.write(struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, 4, n, len(docs)))
        f.write(np.asarray(lengths, np.int32).tobytes())
        f.write(np.asarray(pointers, np.int64).tobytes())
        f.write(np.asarray(docs, np.int64).tobytes())
    return prefix


def documents(tok: SodaTokenizer, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` documents <bos> ids <eos> of 3 to 40 ids drawn from the text range."""
    rng = np.random.default_rng(seed)
    lay = tok.layout
    return [np.concatenate([[lay.bos_id], rng.integers(0, 200, rng.integers(3, 40)), [lay.eos_id]])
            for _ in range(n)]


def write_docs(prefix: str, docs: list[np.ndarray], stats: dict | None = None) -> str:
    write_raw(prefix, np.concatenate(docs), [len(d) for d in docs])
    if stats is not None:
        with open(prefix + ".stats.json", "w") as f:
            json.dump(stats, f)
    return prefix


def stats_of(tok: SodaTokenizer, docs: list[np.ndarray]) -> dict:
    return {"layout": tok.layout.to_dict(), "documents": len(docs),
            "total_tokens": int(sum(len(d) for d in docs))}


# ------------------------------------------------------------------------------- the whole index
def test_a_pointer_in_the_middle_is_checked_and_named(tmp_path, tok):
    docs = documents(tok, 12)
    lengths = [len(d) for d in docs]
    pointers = [4 * sum(lengths[:i]) for i in range(12)]
    pointers[7] += 4  # first and last pointers intact
    prefix = write_raw(str(tmp_path / "s"), np.concatenate(docs), lengths, pointers)
    with pytest.raises(DataError, match=rf"{prefix}\.idx: sequence pointers .*: sequence 7 points at "
                                        rf"byte {pointers[7]}, .* at byte {pointers[7] - 4}$"):
        check_prefix(prefix, tok, mode="quick")


def test_negative_lengths_that_add_up_are_refused(tmp_path, tok):
    """Lengths 6, -2, 7 with pointers that follow them and a 44-byte .bin: sums and pointers
    agree, the second sequence would be read backwards."""
    tokens = np.arange(11)
    prefix = write_raw(str(tmp_path / "neg"), tokens, [6, -2, 7], [0, 24, 16])
    with pytest.raises(DataError, match=rf"{prefix}\.idx: sequence 1 has a negative length -2"):
        check_prefix(prefix, tok, mode="quick")


def test_a_document_index_that_goes_back_names_the_entry(tmp_path, tok):
    docs = documents(tok, 6)
    prefix = write_raw(str(tmp_path / "d"), np.concatenate(docs), [len(d) for d in docs],
                       docs=[0, 1, 3, 2, 4, 5, 6])
    with pytest.raises(DataError, match=rf"{prefix}\.idx: inconsistent document index: entry 3 \(2\) is "
                                        r"below entry 2 \(3\)"):
        check_prefix(prefix, tok, mode="quick")


# ------------------------------------------------------------------- tokens, without stats.json
def test_documents_without_eos_are_refused_without_stats(tmp_path, tok):
    docs = documents(tok, 8)
    docs[5] = docs[5][:-1]  # EOS lost: the trainer would run documents 5 and 6 together
    prefix = write_docs(str(tmp_path / "noeos"), docs)
    assert not os.path.exists(prefix + ".stats.json")
    end = sum(len(d) for d in docs[:6]) - 1
    with pytest.raises(DataError, match=rf"{prefix}\.bin: document 5 does not end with EOS "
                                        rf"{tok.layout.eos_id} \(position {end} holds"):
        check_prefix(prefix, tok)
    check_prefix(prefix, tok, mode="quick")  # structure only


def test_an_eos_inside_a_document_is_refused_naming_the_position(tmp_path, tok):
    docs = documents(tok, 8)
    docs[3][2] = tok.layout.eos_id
    prefix = write_docs(str(tmp_path / "mid"), docs)
    pos = sum(len(d) for d in docs[:3]) + 2
    with pytest.raises(DataError, match=rf"{prefix}\.bin: token {pos} inside document 3 is EOS"):
        check_prefix(prefix, tok)


@pytest.mark.parametrize("block", [5, 7, 64, 1 << 24])
def test_blocks_do_not_hide_or_invent_problems(tmp_path, tok, monkeypatch, block):
    """Documents straddle the scan's blocks: a good shard passes whatever the block size, and the
    first bad token is found (and named by its position in the file) in whichever block holds it."""
    monkeypatch.setattr(shard_format, "_SCAN_BLOCK", block)
    docs = documents(tok, 30, seed=1)
    good = write_docs(str(tmp_path / "good"), docs)
    total = sum(len(d) for d in docs)
    assert check_prefix(good, tok) == {"prefix": good, "sequences": 30, "tokens": total}
    bad_docs = [d.copy() for d in docs]
    bad_docs[17][0] = tok.layout.eos_id  # BOS replaced by EOS
    bad = write_docs(str(tmp_path / "bad"), bad_docs)
    with pytest.raises(DataError, match=rf"document 17 does not start with BOS {tok.layout.bos_id}"):
        check_prefix(bad, tok)
    for value in (-1, tok.layout.vocab_size):
        ids = [d.copy() for d in docs]
        ids[21][1] = value
        pos = sum(len(d) for d in docs[:21]) + 1
        p = write_docs(str(tmp_path / f"ids{value}"), ids)
        with pytest.raises(DataError, match=rf"{p}\.bin: token id {value} at position {pos} is outside"):
            check_prefix(p, tok)


def test_an_empty_document_is_refused(tmp_path, tok):
    docs = documents(tok, 4)
    prefix = write_raw(str(tmp_path / "empty"), np.concatenate(docs), [len(docs[0]), 0] +
                       [len(d) for d in docs[1:]])
    with pytest.raises(DataError, match=rf"{prefix}\.bin: document 1 is empty"):
        check_prefix(prefix, tok)


# ------------------------------------------------------------------------------ stale stats.json
def test_stats_of_other_shards_are_refused_naming_both_files(tmp_path, tok):
    prefix = str(tmp_path / "p")
    write_docs(prefix, documents(tok, 20), stats_of(tok, documents(tok, 20)))
    check_prefix(prefix, tok)
    newer = documents(tok, 25, seed=3)
    write_docs(prefix, newer)  # the shards rewritten, the old stats left beside them
    total = sum(len(d) for d in newer)
    with pytest.raises(DataError) as e:
        check_prefix(prefix, tok, mode="quick")
    msg = str(e.value)
    assert msg.startswith(f"{prefix}.stats.json: describes other shards than {prefix}.bin/.idx")
    assert f"the stats record 20 documents, {prefix}.idx holds 25" in msg
    assert f"tokens, {prefix}.idx holds {total}" in msg


def test_stats_older_than_the_shards_are_refused(tmp_path, tok):
    """Same counts, other tokens: the modification times tell."""
    prefix = str(tmp_path / "p")
    docs = documents(tok, 10)
    write_docs(prefix, docs, stats_of(tok, docs))
    st = os.stat(prefix + ".bin")
    os.utime(prefix + ".stats.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    check_prefix(prefix, tok)  # stats written after the shards: fine
    other = [d.copy() for d in docs]
    other[4][1:-1] = (other[4][1:-1] + 1) % 200
    write_docs(prefix, other)
    os.utime(prefix + ".bin", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(DataError, match=rf"{prefix}\.stats\.json: describes other shards .*\({prefix}\.bin "
                                        r"was modified at .*, after the stats \("):
        check_prefix(prefix, tok, mode="quick")
    newest = os.stat(prefix + ".bin").st_mtime_ns + 1  # stats restated as current (a copy lost times)
    os.utime(prefix + ".stats.json", ns=(newest, newest))
    check_prefix(prefix, tok)


def test_stale_stats_are_refused_before_the_blend_is_compared(tmp_path, tok, small_bpe_path):
    """A stale stats file's codebook count is no reason to refuse a blend: its staleness is."""
    a = write_docs(str(tmp_path / "a"), documents(tok, 5), stats_of(tok, documents(tok, 5)))
    eight = SodaTokenizer(small_bpe_path, num_codebooks=8)
    b_docs = documents(tok, 6, seed=2)
    b = write_docs(str(tmp_path / "b"), b_docs, {**stats_of(eight, b_docs), "documents": 9})
    with pytest.raises(DataError, match=rf"{b}\.stats\.json: describes other shards"):
        check_prefixes([a, b], tok, mode="quick")
    with open(b + ".stats.json", "w") as f:
        json.dump(stats_of(eight, b_docs), f)
    with pytest.raises(DataError, match=f"blend mixes shards made differently: {a} has layout .*, {b} has layout"):
        check_prefixes([a, b], tok, mode="quick")


def test_preprocessed_shards_pass_and_their_rewrite_does_not(tmp_path, small_bpe_path):
    """The real writer (preprocessing, text input) and the trainer's check agree; a shard replaced
    after preprocessing is refused whichever record its stats keep."""
    from megatron_soda.data.cli import preprocess_main

    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i} " * (i + 1)}) + "\n" for i in range(9)))
    prefix = str(tmp_path / "out" / "web")
    assert preprocess_main(["--input", str(src), "--input-format", "text", "--output-prefix", prefix,
                            "--tokenizer", small_bpe_path, "--log-level", "WARNING"]) == 0
    tok = SodaTokenizer.load(small_bpe_path)
    assert check_prefix(prefix, tok)["sequences"] == 9
    with open(prefix + ".stats.json") as f:
        stats = json.load(f)
    assert stats["documents"] == 9 and set(stats["files"]) == {".bin", ".idx"}
    docs = documents(tok, 9, seed=5)
    write_docs(prefix, docs)
    bin_bytes = os.path.getsize(prefix + ".bin")
    with pytest.raises(ShardError, match=rf"{prefix}\.stats\.json: describes other shards than {prefix}"
                                         rf".*{prefix}\.bin has {bin_bytes} bytes, the stats record "
                                         rf"{stats['files']['.bin']['bytes']}"):
        check_prefix(prefix, tok, mode="quick")


def test_stats_that_identify_their_shards_are_compared_by_that_record(tmp_path, tok):
    """With a record of the files (sizes, the .idx checksum) the times do not matter: a copy that
    lost them passes, a rewritten .idx of the same size does not."""
    import hashlib

    from megatron_soda.format.shard_verify import IDENTITY_KEY

    prefix = str(tmp_path / "p")
    docs = documents(tok, 10)
    write_docs(prefix, docs)
    idx = open(prefix + ".idx", "rb").read()
    record = {".idx": {"bytes": len(idx), "sha256": hashlib.sha256(idx).hexdigest()},
              ".bin": {"bytes": os.path.getsize(prefix + ".bin")}}
    with open(prefix + ".stats.json", "w") as f:
        json.dump({**stats_of(tok, docs), IDENTITY_KEY: record}, f)
    later = os.stat(prefix + ".stats.json").st_mtime_ns + 10_000_000_000
    for suffix in (".bin", ".idx"):
        os.utime(prefix + suffix, ns=(later, later))
    check_prefix(prefix, tok)  # shards "newer" than their stats, but the ones they describe
    lengths = [len(d) for d in docs]
    lengths[2], lengths[3] = lengths[2] + 1, lengths[3] - 1  # one boundary moved: same tokens, same sizes
    write_raw(prefix, np.concatenate(docs), lengths)
    assert os.path.getsize(prefix + ".idx") == len(idx) and open(prefix + ".idx", "rb").read() != idx
    with pytest.raises(DataError, match=rf"{prefix}\.stats\.json: describes other shards .*{prefix}\.idx has "
                                        r"sha256 [0-9a-f]{16}\.\.\., the stats record"):
        check_prefix(prefix, tok, mode="quick")
