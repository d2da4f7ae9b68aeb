"""Files of an untrusted Hugging Face directory, opened only where they belong.

An HF directory is input the user downloaded: its index may name any path (``../../x``,
``/etc/passwd``) and any of its files may be a symlink or a special file.  Every file the
converter reads from one goes through :func:`hf_file`, which allows

* a relative name with no ``..`` component, that
* resolves (symlinks followed) inside the directory, or, for a snapshot of the Hugging Face hub
  cache (``.../models--org--name/snapshots/REV/``, whose files are symlinks to ``../../blobs/``),
  inside that repository's ``blobs/`` folder, and
* is a regular file (a FIFO would block the converter forever, a device feed it garbage).
"""

from __future__ import annotations

import os
import stat

from megatron_soda.convert.errors import ConversionError

# What convert_from_hf reads from an HF directory besides the weights (the weights' files are
# checked by the safetensors reader, the index's shards included).
READ_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "soda_tokenizer/soda_tokenizer.json",
    "soda_tokenizer/tokenizer.json",
)


def _roots(hf_dir: str) -> list[str]:
    root = os.path.realpath(hf_dir)
    roots = [root]
    parent = os.path.dirname(root)
    if os.path.basename(parent) == "snapshots":  # the HF hub cache layout
        roots.append(os.path.join(os.path.dirname(parent), "blobs"))
    return roots


def hf_file(hf_dir: str, name: object, *, named_in: str | None = None) -> str | None:
    """The path of file ``name`` of ``hf_dir`` (resolved), or None when there is no such entry;
    refuses a name or an entry that escapes the directory or is not a regular file (see the
    module docstring).  ``named_in``: the file that named it, for the message."""
    origin = f" (named in {named_in})" if named_in else ""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ConversionError(f"{hf_dir}: bad file name {name!r}{origin}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts:
        raise ConversionError(
            f"{hf_dir}: file name {name!r}{origin} points outside the directory"
        )
    path = os.path.join(hf_dir, name)
    if not os.path.lexists(path):
        return None
    real = os.path.realpath(path)
    if not any(os.path.commonpath([real, r]) == r for r in _roots(hf_dir)):
        raise ConversionError(
            f"{path}{origin}: a symlink to {real}, outside {hf_dir}; copy the file into the "
            "directory if you trust it"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        raise ConversionError(f"{path}{origin}: unreadable ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ConversionError(f"{path}{origin}: not a regular file")
    return real


def check_hf_dir(hf_dir: str) -> None:
    """Refuse ``hf_dir`` up front if any file the converter reads from it (config, tokenizer
    files) escapes it or is not a regular file, before any other code opens them."""
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir}: no such directory")
    for name in READ_FILES:
        hf_file(hf_dir, name)
