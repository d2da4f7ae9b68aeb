"""Input readers without the codec: how utterances group into recordings."""

import io
import json
import tarfile

from megatron_soda.data.readers.webdataset import read_webdataset
from megatron_soda.data.records import Recording


def _emilia_tar(path, items: list[tuple[str, str]]) -> None:
    """Members in Emilia's layout: <key>.mp3 (contents irrelevant here) + <key>.json."""
    with tarfile.open(path, "w") as tar:
        for key, speaker in items:
            for ext, data in (
                ("mp3", b"not decoded by the reader"),
                ("json", json.dumps({"id": key, "text": f"utterance {key}", "speaker": speaker}).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_groups_consecutive_utterances_by_speaker(tmp_path):
    # a speaker id may itself contain '#', the character the reader uses for repeat visits
    path = str(tmp_path / "shard.tar")
    _emilia_tar(path, [("u1", "A#1"), ("u2", "A#1"), ("u3", "B"), ("u4", "A#1"), ("u5", "A#1")])
    recs = list(read_webdataset(path))
    assert all(isinstance(r, Recording) for r in recs)
    assert [(r.id, [u.id for u in r.utterances]) for r in recs] == [
        ("A#1", ["u1", "u2"]),
        ("B", ["u3"]),
        ("A#1#2", ["u4", "u5"]),  # the speaker's second run: its own recording id
    ]
