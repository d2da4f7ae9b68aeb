"""What the readers share: JSON lines (plain, gzip or zstd, told apart by their first bytes)
with per-line errors, checked numeric fields, parquet audio cells, and the tar members
no reader accepts (links, devices, FIFOs)."""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TypeVar

from megatron_soda.data.records import InputError, time_problem, unexpected

T = TypeVar("T")

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16  # compressed bytes read at a time
_OUT = 1 << 20  # most decompressed bytes per gzip step
_ZSTD_FEED = 1 << 12  # compressed bytes per zstd step


class StreamError(Exception):
    """A compressed stream that is truncated or corrupt; ``str(e)`` is the reason."""


def _gzip_chunks(f: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of a (possibly multi-member) gzip file, at most ``_OUT`` at a time."""
    d = zlib.decompressobj(wbits=47)  # gzip or zlib header
    data = b""
    while True:
        if not data and not (data := f.read(_CHUNK)):
            break
        try:
            out = d.decompress(data, _OUT)
        except zlib.error as e:
            raise StreamError(f"corrupt gzip stream ({e})") from e
        if out:
            yield out
        if not d.eof:
            data = d.unconsumed_tail
            continue
        data, d = d.unused_data, zlib.decompressobj(wbits=47)  # the next member, if any
        if not data and not (data := f.read(_CHUNK)):
            return
    if not d.eof:
        raise StreamError("truncated gzip stream (ends before its end-of-stream marker)")


def _zstd_chunks(f: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of a zstd file of one or more frames.  Unlike ``zstandard``'s stream
    reader, a truncated last frame is reported, not silently ended.  The decompressor has no
    output limit, so it is fed ``_ZSTD_FEED`` bytes at a time (web text expands ~5x)."""
    import zstandard

    new = zstandard.ZstdDecompressor().decompressobj
    d, started = new(), False
    data, pos = b"", 0
    while True:
        if pos >= len(data):
            data, pos = f.read(_CHUNK), 0
            if not data:
                break
        piece = data[pos : pos + _ZSTD_FEED]
        pos += len(piece)
        started = True
        try:
            out = d.decompress(piece)
        except zstandard.ZstdError as e:
            raise StreamError(f"corrupt zstd stream ({e})") from e
        if out:
            yield out
        if d.eof:  # the next frame starts in what this one did not use
            data, pos = d.unused_data + data[pos:], 0
            d, started = new(), False
    if started:
        raise StreamError("truncated zstd stream (its last frame is incomplete)")


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (with their newline, the last one possibly without) of a stream of chunks."""
    buf = bytearray()
    for chunk in chunks:
        search = len(buf)
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", search)) >= 0:
            yield bytes(buf[start : nl + 1])
            start = search = nl + 1
        del buf[:start]
    if buf:
        yield bytes(buf)


def compression(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (plain) from a file's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def raw_lines(f: BinaryIO) -> Iterator[bytes]:
    """The lines of a binary file, decompressed when its content is gzip or zstd; raises
    :class:`StreamError` where a compressed stream is truncated or corrupt."""
    kind = compression(f.peek(4)[:4] if hasattr(f, "peek") else b"")
    if kind == "gzip":
        return _lines(_gzip_chunks(f))
    if kind == "zstd":
        return _lines(_zstd_chunks(f))
    return iter(f)


def json_lines(path: str) -> Iterator[tuple[int, dict | InputError]]:
    """(line number, parsed object or error) for each non-blank line, of a plain, gzip or zstd
    file (told apart by content).  Where a compressed stream is truncated or corrupt, the line
    it stopped in gets the error and reading ends: the lines before it are kept."""
    with open(path, "rb") as f:
        lineno = 0
        lines = raw_lines(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except StreamError as e:
                yield lineno + 1, InputError(path, f"line {lineno + 1}", str(e))
                return
            lineno += 1
            if not raw.strip():
                continue
            item = f"line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, InputError(path, item, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, InputError(path, item, f"not JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield (
                    lineno,
                    InputError(path, item, f"expected a JSON object, got {type(obj).__name__}"),
                )
                continue
            yield lineno, obj


def manifest_lines(
    path: str, parse: Callable[[str, dict, Callable[[str], str]], T]
) -> Iterator[T | InputError]:
    """``parse(id, obj, local)`` for each JSON object line of a manifest: ``id`` is the line's
    ``"id"`` (default ``<file name>:<line>``), ``local(p)`` an audio path of the line, relative
    ones taken from the manifest's directory.  A ValueError of ``parse`` is that line's error
    (item ``<id> (line N)``), any other exception an unexpected one; reading goes on."""
    base = os.path.dirname(os.path.abspath(path))

    def local(audio: str) -> str:
        return audio if os.path.isabs(audio) else os.path.join(base, audio)

    for lineno, obj in json_lines(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        uid = str(obj.get("id", f"{os.path.basename(path)}:{lineno}"))
        item = f"{uid} (line {lineno})"
        try:
            parsed = parse(uid, obj, local)
        except ValueError as e:
            yield InputError(path, item, str(e))
        except Exception as e:  # a line nobody foresaw is that line's error
            yield InputError(path, item, unexpected(e, path, item))
        else:
            yield parsed


def number(obj: dict, key: str) -> float | None:
    """``obj[key]`` as seconds (None if absent); ValueError unless a finite number >= 0
    (JSON manifests may hold ``NaN`` and ``Infinity``)."""
    v = obj.get(key)
    problem = time_problem(v, repr(key))
    if problem:
        raise ValueError(problem)
    return None if v is None else float(v)


def audio_cell(value: object, base: str) -> tuple[bytes | None, str | None]:
    """A parquet audio cell (Hugging Face datasets' ``{bytes, path}`` struct, or raw bytes) ->
    ``(bytes, None)``, or ``(None, path)`` with a relative path resolved against ``base`` (the
    parquet file's directory); ``(None, None)`` when it holds neither."""
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    if data:
        return data, None
    if path:
        return None, path if os.path.isabs(path) else os.path.join(base, path)
    return None, None


def refused_member(member: tarfile.TarInfo) -> str | None:
    """Why a member that is no regular file or directory is refused (None: not refused)."""
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        return f"{kind} member {member.name} -> {member.linkname} refused: store the file itself"
    if member.ischr() or member.isblk() or member.isfifo():
        kind = "character device" if member.ischr() else "block device" if member.isblk() else "FIFO"
        return f"{kind} member {member.name} refused: not a file"
    return None
