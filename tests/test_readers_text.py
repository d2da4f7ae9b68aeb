"""The ``text`` reader: JSON lines plain, gzip or zstd and parquet (told apart by content),
``--json-keys``, per-line/row errors, truncated streams, directories, bounded memory."""

import gzip
import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError, TextDocument
from megatron_soda.data.units import expand_inputs

ROWS = [
    {"id": f"doc{i}", "title": f"Title {i}", "text": f"Body of document {i}. " * 3}
    for i in range(50)
]


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _write(path, kind: str, raw: bytes):
    data = {
        "plain": raw,
        "gzip": gzip.compress(raw),
        "zstd": zstandard.ZstdCompressor().compress(raw),
    }
    path.write_bytes(data[kind])
    return str(path)


def _parquet(path, rows, row_group_size=16):
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return str(path)


def _read(path, keys=("text",)):
    return list(read_source(path, "text", json_keys=keys))


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_json_lines_in_every_compression_detected_by_content(tmp_path, kind):
    path = _write(tmp_path / "web.jsonl", kind, _jsonl(ROWS))  # the name never says .gz/.zst
    docs = _read(path)
    assert [d.id for d in docs] == [r["id"] for r in ROWS]
    assert [d.text for d in docs] == [r["text"] for r in ROWS]


def test_parquet_streams_row_groups(tmp_path):
    path = _parquet(tmp_path / "web.data", ROWS)  # content (PAR1), not the name
    docs = _read(path)
    assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in ROWS]
    assert pq.ParquetFile(path).num_row_groups == 4


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd", "parquet"])
def test_json_keys_with_two_fields_are_joined_by_newline(tmp_path, kind):
    if kind == "parquet":
        path = _parquet(tmp_path / "w.parquet", ROWS)
    else:
        path = _write(tmp_path / "w.jsonl", kind, _jsonl(ROWS))
    docs = _read(path, keys=("title", "text"))
    assert docs[7].text == f"Title 7\n{ROWS[7]['text']}"
    assert len(docs) == len(ROWS) and all(isinstance(d, TextDocument) for d in docs)


def test_concatenated_gzip_members_and_zstd_frames(tmp_path):
    a, b = _jsonl(ROWS[:20]), _jsonl(ROWS[20:])
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(a) + gzip.compress(b))
    zst = tmp_path / "m.jsonl.zst"
    c = zstandard.ZstdCompressor()
    zst.write_bytes(c.compress(a) + c.compress(b))
    for path in (gz, zst):
        assert [d.id for d in _read(str(path))] == [r["id"] for r in ROWS]


DEFECTS = [
    (b'{"text": "ok one"}\n', None),
    (b'{"text": "bad \xff utf8"}\n', "invalid UTF-8"),
    (b"{not json}\n", "not JSON"),
    (b'["a list"]\n', "expected a JSON object"),
    (b'{"title": "no text field"}\n', "missing text field(s) ['text']"),
    (b'{"text": 42}\n', "missing text field(s) ['text']"),
    (b'{"text": "   \\n "}\n', "empty text"),
    (b"\n", "blank"),  # blank lines are skipped, but counted
    (b'{"text": "ok two"}', None),  # no final newline
]


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_each_defect_is_an_error_at_its_line_and_the_rest_survive(tmp_path, kind):
    path = _write(tmp_path / "d.jsonl", kind, b"".join(line for line, _ in DEFECTS))
    out = _read(path)
    assert [d.text for d in out if isinstance(d, TextDocument)] == ["ok one", "ok two"]
    errors = [(e.item, e.reason) for e in out if isinstance(e, InputError)]
    expected = [(f"line {n}", r) for n, (_, r) in enumerate(DEFECTS, 1) if r not in (None, "blank")]
    assert [item for item, _ in errors] == [item for item, _ in expected]
    for (_, got), (_, want) in zip(errors, expected):
        assert want in got
    assert all(e.file == path for e in out if isinstance(e, InputError))


def test_parquet_row_defects_and_missing_column(tmp_path):
    rows = [{"text": "fine"}, {"text": None}, {"text": "  "}, {"text": "also fine"}]
    out = _read(_parquet(tmp_path / "r.parquet", rows))
    assert [(type(o).__name__, getattr(o, "item", None)) for o in out] == [
        ("TextDocument", None),
        ("InputError", "row 2"),
        ("InputError", "row 3"),
        ("TextDocument", None),
    ]
    assert out[3].id == "r.parquet:4"
    (err,) = _read(str(tmp_path / "r.parquet"), keys=("content",))
    assert err.item == "<file>" and "no text column(s) ['content']" in err.reason


def test_truncated_parquet_is_one_error(tmp_path):
    data = open(_parquet(tmp_path / "ok.parquet", ROWS), "rb").read()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    (err,) = _read(str(cut))
    assert err.item == "<file>" and "not a readable parquet file" in err.reason


@pytest.mark.parametrize("kind,what", [("gzip", "truncated gzip"), ("zstd", "truncated zstd")])
def test_truncated_stream_keeps_the_lines_before_it(tmp_path, kind, what):
    rows = [{"text": f"line number {i} " + "x" * (i % 97)} for i in range(20_000)]
    path = tmp_path / "t.jsonl.x"
    _write(path, kind, _jsonl(rows))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = _read(str(path))
    *docs, err = out
    assert isinstance(err, InputError) and what in err.reason
    assert 0 < len(docs) < len(rows)
    assert [d.text for d in docs] == [r["text"] for r in rows[: len(docs)]]
    assert err.item == f"line {len(docs) + 1}"


def test_corrupt_gzip_is_an_error_not_an_exception(tmp_path):
    raw = gzip.compress(_jsonl(ROWS))
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(raw[:20] + b"\x00" * 200 + raw[220:])
    out = _read(str(path))
    assert isinstance(out[-1], InputError) and "gzip stream" in out[-1].reason


def test_directory_takes_every_text_layout_sorted(tmp_path):
    _write(tmp_path / "b.jsonl.zst", "zstd", _jsonl(ROWS[:2]))
    _write(tmp_path / "a.jsonl.gz", "gzip", _jsonl(ROWS[:2]))
    _write(tmp_path / "c.jsonl", "plain", _jsonl(ROWS[:2]))
    _parquet(tmp_path / "d.parquet", ROWS[:2])
    (tmp_path / "notes.txt").write_text("not an input")
    found = expand_inputs([str(tmp_path)], "text")
    names = [p.rsplit("/", 1)[1] for p in found]
    assert names == ["a.jsonl.gz", "b.jsonl.zst", "c.jsonl", "d.parquet"]
    assert sum(len(_read(p)) for p in found) == 8


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_lines_stream_in_bounded_memory(tmp_path, kind):
    """~20 MB of text (random letters, ~2x compressible): the Python heap never holds more than
    a few chunks of it."""
    letters = np.random.default_rng(0).integers(97, 123, size=(20_000, 1000), dtype=np.uint8)
    letters[:, ::7] = 32
    raw = b"".join(b'{"text": "' + row.tobytes() + b'"}\n' for row in letters)
    path = _write(tmp_path / "big", kind, raw)
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_source(path, "text"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 20_000 and len(raw) > 20e6
    assert peak < 4e6, peak
