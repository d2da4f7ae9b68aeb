"""The converter's reader of megatron_soda checkpoints (convert/dist_reader.py) on checkpoints whose
``.metadata`` lies: chunk files outside the checkpoint, overlapping chunks, a dtype that is not the
stored one.  Each is refused naming the file, instead of reading another file or silently casting
or double-counting elements."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil

import pytest

from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.errors import ConversionError
from megatron_soda.models import preset
from megatron_soda.safe_loading import load_dcp_metadata
from megatron_soda.testing.checkpoints import save_random_checkpoint
from megatron_soda.tokenizer import SodaTokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_bpe_path):
    root = tmp_path_factory.mktemp("ck")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    return save_random_checkpoint(str(root / "save"), preset("tiny").with_overrides(vocab_size=tok.vocab_size), tok)


def tampered(checkpoint: str, tmp_path, edit) -> str:
    """A copy of the checkpoint whose ``.metadata`` went through ``edit(metadata)``."""
    out = str(tmp_path / "copy")
    shutil.copytree(checkpoint, out)
    with open(os.path.join(out, ".metadata"), "rb") as f:
        md = load_dcp_metadata(f)
    edit(md)
    with open(os.path.join(out, ".metadata"), "wb") as f:
        pickle.dump(md, f)
    return out


def layered_key(md) -> str:
    return next(k for k, v in md.state_dict_metadata.items()
                if hasattr(v, "chunks") and len(v.chunks) > 1 and k.startswith("decoder.layers"))


def test_the_untampered_copy_reads(checkpoint, tmp_path):
    reader = DistCheckpointReader(tampered(checkpoint, tmp_path, lambda md: None))
    assert reader.read(reader.keys()[0]) is not None


def test_a_chunk_file_outside_the_checkpoint_is_refused(checkpoint, tmp_path):
    def edit(md):
        index = next(iter(md.storage_data))
        md.storage_data[index] = dataclasses.replace(md.storage_data[index], relative_path="../../outside.distcp")
    with pytest.raises(ConversionError, match=r"\.metadata: chunk file '\.\./\.\./outside\.distcp' .* not a file of the checkpoint"):
        DistCheckpointReader(tampered(checkpoint, tmp_path, edit))


def test_overlapping_chunks_are_refused(checkpoint, tmp_path):
    def edit(md):
        chunks = md.state_dict_metadata[layered_key(md)].chunks
        chunks[1] = dataclasses.replace(chunks[1], offsets=chunks[0].offsets)  # a second copy of chunk 0
    with pytest.raises(ConversionError, match="overlap"):
        DistCheckpointReader(tampered(checkpoint, tmp_path, edit))


def test_a_dtype_the_chunks_do_not_have_is_refused(checkpoint, tmp_path):
    import torch

    name = {}

    def edit(md):
        name["key"] = key = layered_key(md)
        md.state_dict_metadata[key].properties.dtype = torch.float16  # stored as float32
    reader = DistCheckpointReader(tampered(checkpoint, tmp_path, edit))
    with pytest.raises(ConversionError, match="chunk is torch.float32, metadata says torch.float16"):
        reader.read(name["key"])
