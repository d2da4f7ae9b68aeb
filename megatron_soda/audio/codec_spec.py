"""What a ``--codec`` spec names, and the fingerprint of the codes it makes, without loading
torch or the codec: the preprocessing CLI and its planning import this (torch and transformers'
Mimi load only where a codec is built, :mod:`megatron_soda.audio.codec`)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass


class CodecError(ValueError):
    """A codec spec that cannot be resolved or loaded."""


@dataclass(frozen=True)
class CodecSpec:
    kind: str  # "random" or "pretrained"
    name: str  # "tiny" / "full" for random, a path or hub id for pretrained
    seed: int = 0

    def __str__(self) -> str:
        return f"random:{self.name}:{self.seed}" if self.kind == "random" else self.name


def parse_codec_spec(spec: str) -> CodecSpec:
    if spec.startswith("random:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[1] not in ("tiny", "full"):
            raise CodecError(
                f"codec spec {spec!r}: expected random:tiny[:seed] or random:full[:seed]"
            )
        try:
            seed = int(parts[2]) if len(parts) == 3 else 0
        except ValueError as e:
            raise CodecError(f"codec spec {spec!r}: seed must be an integer") from e
        return CodecSpec("random", parts[1], seed)
    return CodecSpec("pretrained", spec)


def _resolve_pretrained(name: str) -> str:
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as e:
        raise CodecError(
            f"codec {name!r}: not a local directory and not in the Hugging Face cache "
            "(weights are never downloaded at run time; download them once with "
            f"`hf download {name}` (into the cache) or `hf download {name} --local-dir DIR` and pass DIR; random:full for tests only)"
        ) from e


def codec_fingerprint(
    spec: str | CodecSpec,
    chunk_seconds: float = 60.0,
    precision: str = "fp32",
    *,
    with_location: bool = True,
) -> str:
    """Identifies the codes a codec produces, without loading it: the spec, piece length and
    precision, plus the config and weight files of a pretrained codec.

    ``with_location=False`` leaves out where a pretrained codec's files were found (the Hugging
    Face cache for ``kyutai/mimi``, or a ``--local-dir`` copy): what shards record, so that
    the trainer compares blends by weights, not paths.  The codes cache keys on the default
    (location included), as it always has, so existing caches stay valid."""
    spec = spec if isinstance(spec, CodecSpec) else parse_codec_spec(spec)
    named = with_location or spec.kind == "random"  # a random spec is its own content
    key: dict = {"spec": str(spec) if named else "pretrained", "chunk_s": chunk_seconds}
    if spec.kind == "random":  # random weights built with the decoder since build 2
        key["random_build"] = 2
    if precision != "fp32":  # fp32 keeps the fingerprint it always had
        key["precision"] = precision
    h = hashlib.sha256(json.dumps(key).encode())
    if spec.kind == "pretrained":
        path = _resolve_pretrained(spec.name)
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full) and name.endswith((".json", ".safetensors", ".bin")):
                st = os.stat(full)
                h.update(f"{name}:{st.st_size}".encode())
                with open(full, "rb") as f:
                    h.update(f.read(1 << 16))
    return h.hexdigest()[:16]
