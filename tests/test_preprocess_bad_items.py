"""Bad values one item at a time (issue 13): special files, NaN/Infinity/negative times and
lone surrogates in every reader, and unforeseen exceptions are per-item errors in
``P.errors.jsonl``; the rest is kept, and the exit code tells a crash (1) from an exceeded
error rate (3)."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers_audio import deadline, fail_codec_on
from helpers_readers import cached_recordings, errors_by_item

from megatron_soda.data import codec_workers, encode_stage, preprocess
from megatron_soda.data.cli import EXIT_CRASH, EXIT_ERROR_RATE, EXIT_FATAL, EXIT_OK, build_parser
from megatron_soda.data.cli import preprocess_main as cli_main
from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError

SR = 16000


def wav(path, seconds: float) -> str:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), SR)
    return str(path)


def run(inputs, fmt: str, prefix, llama3_path: str, *extra: str) -> int:
    argv = ["--input", *map(str, inputs), "--input-format", fmt, "--output-prefix", str(prefix),
            "--tokenizer", llama3_path, "--codec", "random:tiny", "--workers", "1",
            "--log-level", "WARNING", "--interleave", "text-first", *extra]
    return cli_main(argv)


def jsonl(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------- special files
def test_special_files_are_refused_per_item_without_opening(tmp_path, llama3_path):
    wav(tmp_path / "good.wav", 1.0)
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "folder.wav").mkdir()
    sock_dir = tempfile.mkdtemp(dir="/tmp")  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(sock_dir, "s.wav"))
    os.symlink("/dev/zero", tmp_path / "zero.wav")
    rows = [("good", "good.wav"), ("pipe", "pipe.wav"), ("folder", "folder.wav"),
            ("sock", os.path.join(sock_dir, "s.wav")), ("zero", "zero.wav")]
    manifest = jsonl(tmp_path / "m.jsonl", [json.dumps({"id": i, "audio": a, "text": f"say {i}"})
                                            for i, a in rows])
    try:
        with deadline(120):
            rc = run([manifest], "jsonl", tmp_path / "out", llama3_path)
    finally:
        sock.close()
    assert rc == EXIT_ERROR_RATE  # 4 of 5 rejected, above the default 1% ...
    errors = errors_by_item(tmp_path / "out")
    assert set(errors) == {"pipe", "folder", "sock", "zero"}
    for item, kind in (("pipe", "a FIFO (named pipe)"), ("folder", "a directory"), ("sock", "a socket"),
                       ("zero", "a character device")):
        assert f"is {kind}, not a regular file" in errors[item] and f"({item})" in errors[item]
    (rec,) = cached_recordings(tmp_path / "out")  # ... and the good item is kept
    assert [(u.id, round(u.seconds, 3)) for u in rec.utterances] == [("good", 1.0)]


def test_an_input_that_is_a_fifo_is_refused_up_front(tmp_path, llama3_path, capsys):
    os.mkfifo(tmp_path / "m.jsonl")
    with deadline(60):
        assert run([tmp_path / "m.jsonl"], "jsonl", tmp_path / "out", llama3_path) == EXIT_FATAL
    assert "m.jsonl: is a FIFO (named pipe), not a regular file" in capsys.readouterr().err


# ------------------------------------------------------- bad values, every reader
NAN, INF = float("nan"), float("inf")


def _jsonl_input(d):
    wav(d / "a.wav", 1.0)
    lines = [{"id": "good", "audio": "a.wav", "text": "fine", "start": 0.1, "end": 0.5},
             {"id": "nan", "audio": "a.wav", "text": "t", "start": NAN, "end": 0.5},
             {"id": "inf", "audio": "a.wav", "text": "t", "start": 0.1, "end": INF},
             {"id": "neg", "audio": "a.wav", "text": "t", "start": -1.0, "end": 0.5},
             {"id": "sur", "audio": "a.wav", "text": "x \ud800 y"},
             {"id": "id\udc80", "audio": "a.wav", "text": "t"}]
    return jsonl(d / "m.jsonl", [json.dumps(x) for x in lines]), {
        "nan (line 2)": "finite", "inf (line 3)": "finite", "neg (line 4)": ">= 0",
        "sur": "surrogate U+D800", "id\\udc80": "surrogate U+DC80"}


def _nemo_input(d):
    wav(d / "a.wav", 1.0)
    lines = [{"audio_filepath": "a.wav", "text": "fine", "duration": 1.0, "id": "good"},
             {"audio_filepath": "a.wav", "text": "t", "duration": NAN, "id": "nan"},
             {"audio_filepath": "a.wav", "text": "t", "duration": 0.2, "offset": INF, "id": "inf"},
             {"audio_filepath": "a.wav", "text": "t", "duration": 0.2, "offset": -3, "id": "neg"},
             {"audio_filepath": "a.wav", "text": "\ud800", "duration": 1.0, "id": "sur"}]
    return jsonl(d / "m.json", [json.dumps(x) for x in lines]), {
        "nan (line 2)": "finite", "inf (line 3)": "finite", "neg (line 4)": ">= 0",
        "sur": "surrogate"}


def _lhotse_input(d):
    wav(d / "a.wav", 1.0)
    rec = {"id": "r", "sources": [{"type": "file", "channels": [0], "source": "a.wav"}],
           "sampling_rate": SR, "num_samples": SR, "duration": 1.0, "channel_ids": [0]}
    sups = [("good", 0.1, 0.3, "fine"), ("nan", NAN, 0.3, "t"), ("inf", 0.1, INF, "t"),
            ("sur", 0.1, 0.2, "a\ud800")]
    jsonl(d / "c_supervisions_x.jsonl", [json.dumps({"id": i, "recording_id": "r", "start": s,
          "duration": du, "channel": 0, "text": t}) for i, s, du, t in sups])
    return jsonl(d / "c_recordings_x.jsonl", [json.dumps(rec)]), {
        "nan": "bad span", "inf": "bad span", "sur": "surrogate"}


def _librispeech_input(d):
    for u in ("1-2-0000", "1-2-0001"):
        wav(d / f"{u}.flac", 0.5)
    (d / "1-2.trans.txt").write_bytes(b"1-2-0000 FINE\n1-2-0001 BAD \xed\xa0\x80 BYTES\n")
    return str(d / "1-2.trans.txt"), {"line 2": "invalid UTF-8"}


def _yodas2_input(d):
    (d / "audio").mkdir()
    (d / "text").mkdir()
    buf = io.BytesIO()
    sf.write(buf, np.zeros(SR, np.float32), SR, format="WAV", subtype="PCM_16")
    with tarfile.open(d / "audio" / "00000000.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("vid.wav")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    text = {"vid-00000-00000010-00000040": "fine", "vid-00001-00000050-00000080": "a \ud800"}
    (d / "text" / "00000000.json").write_text(json.dumps([{"audio_id": "vid", "text": text}]))
    return str(d / "audio" / "00000000.tar.gz"), {"vid-00001-00000050-00000080": "surrogate"}


def _yodas_parquet_input(d):
    clip = {"bytes": open(wav(d / "a.wav", 0.5), "rb").read(), "path": None}
    ids = ["v-00000-00000000-00000050", "v-00001-00000100-00000150", "v-00002-00000200-00000250",
           "v-00003-00000300-00000350"]
    pq.write_table(pa.table({"utt_id": ids, "audio": [clip] * 4, "text": ["fine", "t", "t", "t"],
                             "start": [0.0, NAN, -2.0, 3.0], "duration": [0.5, 0.5, 0.5, INF]}),
                   d / "y.parquet")
    return str(d / "y.parquet"), {ids[1]: "finite", ids[2]: ">= 0", ids[3]: "finite"}


def _parquet_input(d):
    clip = {"bytes": open(wav(d / "a.wav", 1.0), "rb").read(), "path": None}
    utts = [[{"utt_id": "good", "text": "fine", "start": 0.1, "end": 0.4}],  # (arrow strings
            [{"utt_id": "x", "text": "t", "start": NAN, "end": 0.4}],  # are valid UTF-8)
            [{"utt_id": "y", "text": "t", "start": 0.1, "end": INF}],
            [{"utt_id": "z", "text": "t", "start": -1.0, "end": 0.4}]]
    pq.write_table(pa.table({"id": ["r0", "r1", "r2", "r3"], "audio": [clip] * 4,
                             "utterances": utts}), d / "p.parquet")
    return str(d / "p.parquet"), {"r1": "finite", "r2": "finite", "r3": ">= 0"}


def _text_input(d):
    lines = ['{"id": "good", "text": "fine"}', '{"id": "sur", "text": "a \\ud800 b"}',
             '{"id": "\\udfff", "text": "ok text, bad id"}']
    return jsonl(d / "t.jsonl", lines), {"sur": "surrogate U+D800", "\\udfff": "surrogate U+DFFF"}


READERS = {"jsonl": (_jsonl_input, ["good"]), "nemo": (_nemo_input, ["good"]),
           "lhotse": (_lhotse_input, ["good"]), "librispeech": (_librispeech_input, ["1-2-0000"]),
           "yodas2": (_yodas2_input, ["vid-00000-00000010-00000040"]),
           "yodas-parquet": (_yodas_parquet_input, ["v-00000-00000000-00000050"]),
           "parquet": (_parquet_input, ["good"]), "text": (_text_input, ["good"])}


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_bad_values_are_errors_of_their_item_in_every_reader(tmp_path, fmt):
    if fmt == "lhotse":
        pytest.importorskip("lhotse")
    make, kept = READERS[fmt]
    path, want = make(tmp_path)
    got_ids, errors = [], {}
    for item in read_source(path, fmt):  # the registry's path, as both stages read
        if isinstance(item, InputError):
            errors[item.item] = item.reason
            json.dumps(item.to_dict(), ensure_ascii=False).encode("utf-8")  # reportable
        elif fmt == "text":
            got_ids.append(item.id)
        else:
            got_ids += [u.id for u in item.utterances]
    assert set(errors) == set(want), errors
    for item, phrase in want.items():
        assert phrase in errors[item], (item, errors[item])
    assert got_ids == kept


def test_bad_values_end_to_end_keep_the_rest(tmp_path, llama3_path):
    path, want = _jsonl_input(tmp_path)
    assert run([path], "jsonl", tmp_path / "out", llama3_path, "--max-error-rate", "0.9") == EXIT_OK
    assert set(errors_by_item(tmp_path / "out")) == set(want)
    stats = json.load(open(tmp_path / "out.stats.json"))
    assert (stats["utterances"], stats["errors"], stats["attempted"]) == (1, 5, 6)
    (rec,) = cached_recordings(tmp_path / "out")
    assert [(u.id, round(u.seconds, 3)) for u in rec.utterances] == [("good", 0.4)]


# ------------------------------------------------------------ unforeseen failures
@pytest.mark.parametrize("where", ["decoder", "codec"])
def test_an_unexpected_exception_is_its_items_error(tmp_path, llama3_path, monkeypatch, caplog, where):
    for name, seconds in (("a", 0.5), ("b", 0.7), ("c", 0.9)):
        wav(tmp_path / f"{name}.wav", seconds)
    manifest = jsonl(tmp_path / "m.jsonl", [json.dumps({"id": n, "audio": f"{n}.wav", "text": n})
                                            for n in "abc"])
    if where == "decoder":  # libsndfile raising what nobody catches, for b.wav only
        class SoundFile(sf.SoundFile):
            def __init__(self, file, *a, **kw):
                if str(getattr(file, "name", file)).endswith("b.wav"):  # a path or a file object
                    raise KeyError("boom in b")
                super().__init__(file, *a, **kw)

        monkeypatch.setattr(sf, "SoundFile", SoundFile)
    else:
        fail_codec_on(monkeypatch, int(0.7 * 24000), "boom in b")
    rc = run([manifest], "jsonl", tmp_path / "out", llama3_path, "--chunk-utterances", "3")
    assert rc == EXIT_ERROR_RATE
    errors = errors_by_item(tmp_path / "out")
    boom = "KeyError: 'boom in b'" if where == "decoder" else "RuntimeError: boom in b"
    assert set(errors) == {"b"} and f"unexpected {boom}" in errors["b"]
    assert any("b" in r.getMessage() and boom in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    got = {u.id: round(u.seconds, 3) for r in cached_recordings(tmp_path / "out") for u in r.utterances}
    assert got == {"a": 0.5, "c": 0.9}


def test_a_reader_that_raises_ends_only_its_file(tmp_path, llama3_path, monkeypatch):
    from megatron_soda.data.readers import text

    real = text.json_lines

    def lines(path):
        for n, (lineno, obj) in enumerate(real(path)):
            if "broken" in path and n == 1:
                raise KeyError("surprise")
            yield lineno, obj

    monkeypatch.setattr(text, "json_lines", lines)
    docs = [json.dumps({"id": f"{n}{k}", "text": f"doc {n}{k}"}) for n in "xy" for k in range(3)]
    a = jsonl(tmp_path / "a_broken.jsonl", docs[:3])
    b = jsonl(tmp_path / "b.jsonl", docs[3:])
    assert run([a, b], "text", tmp_path / "out", llama3_path) == EXIT_ERROR_RATE
    errors = errors_by_item(tmp_path / "out")
    assert list(errors) == ["after x0"]
    assert "unexpected KeyError: 'surprise'; rest of the file skipped" in errors["after x0"]
    stats = json.load(open(tmp_path / "out.stats.json"))
    assert stats["documents"] == 4  # x0 and all of b.jsonl


def test_a_crash_exits_1_and_the_codes_are_documented(tmp_path, llama3_path, monkeypatch, capsys):
    path = jsonl(tmp_path / "t.jsonl", ['{"text": "a document"}'])

    def broken(*a, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(preprocess, "write_reports", broken)
    assert run([path], "text", tmp_path / "out", llama3_path) == EXIT_CRASH == 1
    assert "crashed: RuntimeError: a bug" in capsys.readouterr().err
    epilog = build_parser().format_help()
    assert (EXIT_OK, EXIT_FATAL, EXIT_ERROR_RATE) == (0, 2, 3)
    for code, meaning in ((0, "success"), (1, "crash"), (2, "unusable arguments"),
                          (3, "error rate exceeded")):
        assert f"  {code}  {meaning}" in epilog


def test_a_job_of_several_recordings_loses_only_the_failing_one(tmp_path, monkeypatch):
    """On a GPU a job holds many recordings: a failure is retried one recording at a time."""
    from megatron_soda.data.records import AudioRef, Recording, Utterance

    monkeypatch.setattr(codec_workers, "_CODEC", None)  # this process's codec state, restored after
    monkeypatch.setattr(codec_workers, "_CODEC_CONFIG", None)
    codec_workers._init_worker(encode_stage.EncodeConfig(codec="random:tiny"), None)
    recs = [Recording(n, "m.jsonl", [Utterance(n, n, AudioRef(path=wav(tmp_path / f"{n}.wav", s)))])
            for n, s in (("a", 0.5), ("b", 0.7), ("c", 0.9))]
    alone = {r.id: codec_workers.encode_job([r])["encoded"][0][0][1] for r in recs}
    fail_codec_on(monkeypatch, int(0.7 * 24000), "boom in b")
    out = codec_workers.encode_job(recs)
    assert [e.item for e in out["errors"]] == ["b"]
    assert "unexpected RuntimeError: boom in b" in out["errors"][0].reason
    (a,), (b,), (c,) = out["encoded"]
    assert b is None and a[0] == 0.5 and c[0] == 0.9
    assert np.array_equal(a[1], alone["a"]) and np.array_equal(c[1], alone["c"])
