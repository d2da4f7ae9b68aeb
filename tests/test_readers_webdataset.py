"""``--input-format webdataset`` without the codec: members paired by key whatever their order
within the window, a clear error beyond it, and link/device members refused by name."""

from __future__ import annotations

import io
import json
import tarfile

from megatron_soda.data.readers import read_source
from megatron_soda.data.readers.webdataset import WINDOW_MEMBERS
from megatron_soda.data.records import InputError, Recording


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def _pair(key: str, speaker: str = "S") -> list[tuple[str, bytes]]:
    """A key's two members; the audio bytes are the key itself, so pairing is checkable."""
    meta = {"id": key, "text": f"text of {key}", "speaker": speaker}
    return [(f"{key}.wav", f"audio of {key}".encode()), (f"{key}.json", json.dumps(meta).encode())]


def _tar(path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = ()) -> str:
    with tarfile.open(path, "w") as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in members:
            tar.addfile(*_member(name, data))
    return str(path)


def _read(path: str) -> tuple[list[tuple[str, str, bytes]], dict[str, str]]:
    """(utterance id, text, audio bytes) in order, and item -> reason of the errors."""
    utts, errors = [], {}
    for item in read_source(path, "webdataset"):
        if isinstance(item, InputError):
            errors[item.item] = item.reason
        else:
            assert isinstance(item, Recording)
            utts += [(u.id, u.text, u.audio.data) for u in item.utterances]
    return utts, errors


KEYS = [f"k{i:03d}" for i in range(6)]


def test_members_sorted_by_extension_are_paired_by_key(tmp_path):
    pairs = [m for k in KEYS for m in _pair(k)]
    by_ext = sorted(pairs, key=lambda m: (m[0].rsplit(".", 1)[1], m[0]))  # all .json, then all .wav
    assert [n for n, _ in by_ext[:2]] == ["k000.json", "k001.json"]
    utts, errors = _read(_tar(tmp_path / "by_ext.tar", by_ext))
    assert errors == {}
    want = [(k, f"text of {k}", f"audio of {k}".encode()) for k in KEYS]
    assert sorted(utts) == want
    grouped, _ = _read(_tar(tmp_path / "grouped.tar", pairs))
    assert grouped == want  # the usual layout is unchanged


def test_a_key_beyond_the_window_is_an_error_saying_what_order_is_needed(tmp_path):
    filler = [m for i in range(WINDOW_MEMBERS // 2 + 10) for m in _pair(f"f{i:05d}")]
    far_wav, far_json = _pair("far")
    lone_wav, _ = _pair("lone")
    utts, errors = _read(_tar(tmp_path / "far.tar", [far_wav, lone_wav, *filler, far_json]))
    assert set(errors) == {"far", "lone"}  # one error each, the late json not reported again
    for reason in errors.values():
        assert "audio member without a metadata json" in reason
        assert f"within {WINDOW_MEMBERS} members of each other" in reason
    assert [u[0] for u in utts] == [f"f{i:05d}" for i in range(WINDOW_MEMBERS // 2 + 10)]


def test_a_key_missing_a_member_at_the_end_of_the_tar(tmp_path):
    utts, errors = _read(_tar(tmp_path / "end.tar", [*_pair("a"), _pair("b")[1]]))
    assert [u[0] for u in utts] == ["a"]
    assert set(errors) == {"b"} and "metadata json without an audio member" in errors["b"]
    assert "each key's members within" in errors["b"]  # says what ordering is required


def test_link_and_device_members_are_refused_by_name(tmp_path):
    infos = []
    for name, kind, link in (
        ("sym.wav", tarfile.SYMTYPE, "/etc/passwd"),
        ("hard.wav", tarfile.LNKTYPE, "a.wav"),
        ("zero.wav", tarfile.CHRTYPE, ""),
        ("disk.wav", tarfile.BLKTYPE, ""),
        ("pipe.wav", tarfile.FIFOTYPE, ""),
    ):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        infos.append(info)
    utts, errors = _read(_tar(tmp_path / "links.tar", _pair("a"), infos))
    assert [u[0] for u in utts] == ["a"]
    assert set(errors) == {"sym.wav", "hard.wav", "zero.wav", "disk.wav", "pipe.wav"}
    assert "symbolic link member sym.wav -> /etc/passwd refused" in errors["sym.wav"]
    assert "hard link member hard.wav -> a.wav refused" in errors["hard.wav"]
    assert "character device member zero.wav refused" in errors["zero.wav"]
    assert "block device member disk.wav refused" in errors["disk.wav"]
    assert "FIFO member pipe.wav refused" in errors["pipe.wav"]


def test_bad_metadata_values_are_errors_of_their_key(tmp_path):
    members = [*_pair("good")]
    for key, meta in (
        ("nan", {"text": "t", "duration": float("nan")}),
        ("inf", {"text": "t", "duration": float("inf")}),
        ("neg", {"text": "t", "duration": -1.0}),
        ("surrogate", {"text": "a \ud800 b"}),
    ):
        members += [(f"{key}.wav", b"x"), (f"{key}.json", json.dumps(meta).encode())]
    utts, errors = _read(_tar(tmp_path / "values.tar", members))
    assert [u[0] for u in utts] == ["good"]
    assert set(errors) == {"nan", "inf", "neg", "surrogate"}
    assert "finite" in errors["nan"] and "finite" in errors["inf"] and ">= 0" in errors["neg"]
    assert "lone UTF-16 surrogate U+D800" in errors["surrogate"]


def test_yodas2_tars_refuse_link_members_too(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "s.json").write_text("[]")
    info = tarfile.TarInfo("evil.wav")
    info.type, info.linkname = tarfile.SYMTYPE, "/dev/zero"
    path = _tar(tmp_path / "audio" / "s.tar.gz", [], [info])
    (err,) = list(read_source(path, "yodas2"))
    assert err.item == "evil.wav" and "symbolic link member evil.wav -> /dev/zero refused" in err.reason
