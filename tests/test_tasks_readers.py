"""Benchmark readers (megatron_soda/tasks/readers): small files written here in each published
layout (HF parquet shards with audio structs, the Spoken StoryCloze WAV folders, the generic
JSONL), and the items checked against the rows that were written."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from megatron_soda.tasks.items import ChoiceItem, PairItem
from megatron_soda.tasks.readers import TASKS, ItemError, read_task, task_kind

AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def wav_bytes(freq: float) -> bytes:
    """A 20 ms sine as WAV bytes: each member gets different bytes, so we can tell them apart."""
    t = np.arange(320) / 16000.0
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def write_parquet(path: str, rows: list[dict], schema: pa.Schema) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


SPEED_WUGGY = pa.schema(
    [
        ("id", pa.string()),
        ("positive", AUDIO),
        ("negative", AUDIO),
        ("positive_word", pa.string()),
        ("negative_word", pa.string()),
    ]
)
SPEED_BLIMP = pa.schema(
    [
        ("id", pa.string()),
        ("positive", AUDIO),
        ("negative", AUDIO),
        ("positive_transcription", pa.string()),
        ("negative_transcription", pa.string()),
    ]
)
SALMON = pa.schema(
    [
        ("task", pa.string()),
        ("ind", pa.int64()),
        ("positive_audio", AUDIO),
        ("negative_audio", AUDIO),
    ]
)
HELLASWAG = pa.schema(
    [
        ("ind", pa.int64()),
        ("activity_label", pa.string()),
        ("ctx_a", pa.string()),
        ("ctx_b", pa.string()),
        ("ctx", pa.string()),
        ("endings", pa.list_(pa.string())),
        ("label", pa.string()),
    ]
)


def wuggy_rows(start: int, n: int) -> list[dict]:
    return [
        {
            "id": f"w{i}",
            "positive": {"bytes": wav_bytes(200 + 10 * i), "path": f"pos{i}.wav"},
            "negative": {"bytes": wav_bytes(700 + 10 * i), "path": f"neg{i}.wav"},
            "positive_word": f"Word{i}",
            "negative_word": f"Wurd{i}",
        }
        for i in range(start, start + n)
    ]


def items_and_errors(task: str, path: str) -> tuple[list, list[ItemError]]:
    out = list(read_task(task, path))
    return [x for x in out if not isinstance(x, ItemError)], [
        x for x in out if isinstance(x, ItemError)
    ]


def test_registry_names_and_kinds():
    expected = {
        "swuggy",
        "sblimp",
        "salmon",
        "sstorycloze",
        "tstorycloze",
        "twuggy",
        "tblimp",
        "hellaswag",
        "jsonl",
    }
    assert set(TASKS) == expected
    assert {t for t in TASKS if task_kind(t) == "choice"} == {"hellaswag"}
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        task_kind("nope")
    with pytest.raises(ValueError, match="unknown task"):
        read_task("nope", ".")


def test_swuggy_snapshot_reads_the_train_shards_only(tmp_path):
    snap = tmp_path / "sWUGGY"
    rows = wuggy_rows(0, 3) + wuggy_rows(3, 2)
    write_parquet(str(snap / "data/train-00000-of-00002.parquet"), rows[:3], SPEED_WUGGY)
    write_parquet(str(snap / "data/train-00001-of-00002.parquet"), rows[3:], SPEED_WUGGY)
    # another split, and the Hub client's hidden cache folder: neither is read
    write_parquet(
        str(snap / "data/validation-00000-of-00001.parquet"), wuggy_rows(50, 1), SPEED_WUGGY
    )
    write_parquet(
        str(snap / ".cache/huggingface/train-00000-of-00001.parquet"),
        wuggy_rows(60, 1),
        SPEED_WUGGY,
    )

    items, errors = items_and_errors("swuggy", str(snap))
    assert errors == []
    assert [i.id for i in items] == [r["id"] for r in rows]
    for item, row in zip(items, rows):
        assert isinstance(item, PairItem) and item.subtask == ""
        assert item.positive.audio == row["positive"]["bytes"]
        assert item.negative.audio == row["negative"]["bytes"]
        assert item.positive.modality == item.negative.modality == "audio"

    texts, errors = items_and_errors("twuggy", str(snap))
    assert errors == []
    assert [(i.positive.text, i.negative.text) for i in texts] == [
        (r["positive_word"], r["negative_word"]) for r in rows
    ]
    # a single parquet file is accepted as well
    one, _ = items_and_errors("twuggy", str(snap / "data/validation-00000-of-00001.parquet"))
    assert [i.id for i in one] == ["w50"]


def test_sblimp_audio_and_tblimp_lowercased_text(tmp_path):
    rows = [
        {
            "id": f"b{i}",
            "positive": {"bytes": wav_bytes(300 + i), "path": None},
            "negative": {"bytes": wav_bytes(900 + i), "path": None},
            "positive_transcription": f"The Dog {i} Barks",
            "negative_transcription": f"The Dog {i} Bark",
        }
        for i in range(3)
    ]
    path = write_parquet(
        str(tmp_path / "sBLIMP/data/train-00000-of-00001.parquet"), rows, SPEED_BLIMP
    )
    audio, errors = items_and_errors("sblimp", os.path.dirname(os.path.dirname(path)))
    assert errors == [] and [i.positive.audio for i in audio] == [
        r["positive"]["bytes"] for r in rows
    ]
    text, errors = items_and_errors("tblimp", path)
    assert errors == []
    # the authors' sBLIMP/inference_text_0shot.py lower-cases both sides
    assert [(i.positive.text, i.negative.text) for i in text] == [
        (r["positive_transcription"].lower(), r["negative_transcription"].lower()) for r in rows
    ]


def test_salmon_all_subtasks_ids_and_folder_fallback(tmp_path):
    snap = tmp_path / "SALMon"
    expected = []
    for task, n in (("bg_alignment", 2), ("speaker_consistency", 3)):
        rows = [
            {
                "task": task,
                "ind": k,
                "positive_audio": {
                    "bytes": wav_bytes(100 + 7 * k + len(task)),
                    "path": f"{k}_pos.wav",
                },
                "negative_audio": {
                    "bytes": wav_bytes(800 + 7 * k + len(task)),
                    "path": f"{k}_neg.wav",
                },
            }
            for k in range(n)
        ]
        write_parquet(str(snap / task / "train-00000-of-00001.parquet"), rows, SALMON)
        expected += [(f"{task}/{r['ind']}", task, r["positive_audio"]["bytes"]) for r in rows]
    # a sub-task file without the 'task' column: its config folder names the sub-task
    no_task = pa.schema([f for f in SALMON if f.name != "task"])
    row = {
        "ind": 0,
        "positive_audio": {"bytes": wav_bytes(55), "path": None},
        "negative_audio": {"bytes": wav_bytes(66), "path": None},
    }
    write_parquet(str(snap / "rir_consistency/train/0000.parquet"), [row], no_task)
    expected.append(("rir_consistency/0", "rir_consistency", row["positive_audio"]["bytes"]))

    # the converted parquet branch also holds pooled copies (all/, all_alignment/, ...): skipped
    pooled = [{"task": t, "ind": 0, "positive_audio": {"bytes": wav_bytes(9), "path": None},
               "negative_audio": {"bytes": wav_bytes(10), "path": None}}
              for t in ("bg_alignment", "speaker_consistency")]
    for folder in ("all", "all_alignment"):
        write_parquet(str(snap / folder / "train/0000.parquet"), pooled, SALMON)

    items, errors = items_and_errors("salmon", str(snap))
    assert errors == []
    got = [(i.id, i.subtask, i.positive.audio) for i in items]
    assert sorted(got) == sorted(expected)  # same 'ind' in two sub-tasks is not a duplicate


def test_bad_rows_are_reported_per_item_and_the_rest_is_read(tmp_path):
    rows = wuggy_rows(0, 4)
    rows[1]["positive"] = None  # no audio at all
    rows[2]["negative"] = {"bytes": b"", "path": "missing.wav"}  # no bytes, path absent
    rows[3]["positive_word"] = "   "
    audio_file = tmp_path / "snap/data/neg_on_disk.wav"
    path = write_parquet(
        str(tmp_path / "snap/data/train-00000-of-00001.parquet"), rows, SPEED_WUGGY
    )
    audio_file.write_bytes(wav_bytes(440))
    rows_ok = wuggy_rows(10, 1)
    rows_ok[0]["negative"] = {"bytes": None, "path": "neg_on_disk.wav"}  # resolved next to the file
    write_parquet(str(tmp_path / "snap/data/train-00001-of-00002.parquet"), rows_ok, SPEED_WUGGY)

    items, errors = items_and_errors("swuggy", str(tmp_path / "snap"))
    assert [i.id for i in items] == ["w0", "w3", "w10"]
    assert items[2].negative.audio == str(audio_file)
    assert [e.where for e in errors] == [f"{path} row 1", f"{path} row 2"]
    assert "no audio" in errors[0].reason and "positive" in errors[0].reason
    assert "missing.wav" in errors[1].reason and "not found" in errors[1].reason

    texts, errors = items_and_errors("twuggy", path)
    assert [i.id for i in texts] == ["w0", "w1", "w2"]
    assert [e.where for e in errors] == [f"{path} row 3"] and "empty" in errors[0].reason


def test_duplicate_ids_are_reported(tmp_path):
    write_parquet(str(tmp_path / "s/train-00000-of-00002.parquet"), wuggy_rows(0, 2), SPEED_WUGGY)
    write_parquet(str(tmp_path / "s/train-00001-of-00002.parquet"), wuggy_rows(1, 2), SPEED_WUGGY)
    items, errors = items_and_errors("twuggy", str(tmp_path / "s"))
    assert [i.id for i in items] == ["w0", "w1", "w2"]
    assert len(errors) == 1 and "duplicate id 'w1'" in errors[0].reason


def test_missing_columns_and_split_raise_before_any_item(tmp_path):
    schema = pa.schema([f for f in SPEED_WUGGY if f.name != "negative"])
    rows = [{k: v for k, v in r.items() if k != "negative"} for r in wuggy_rows(0, 1)]
    path = write_parquet(str(tmp_path / "s/train-00000-of-00001.parquet"), rows, schema)
    with pytest.raises(ValueError) as e:
        read_task("swuggy", str(tmp_path / "s"))
    assert (
        path in str(e.value) and "['negative']" in str(e.value) and "positive_word" in str(e.value)
    )
    assert list(read_task("twuggy", path))  # the text columns are all there
    write_parquet(str(tmp_path / "h/data/train-00000-of-00001.parquet"), [], HELLASWAG)
    with pytest.raises(FileNotFoundError, match="split 'validation'"):
        read_task("hellaswag", str(tmp_path / "h"))
    with pytest.raises(FileNotFoundError):
        read_task("salmon", str(tmp_path / "nowhere"))


def test_hellaswag_lm_eval_preprocessing_on_two_hand_written_items(tmp_path):
    rows = [
        {  # WikiHow-style: [header]/[title]/[step] artifacts
            "ind": 7,
            "activity_label": "Home and Garden",
            "ctx_a": "[header] How to clean a grill [title] Heat the grill.",
            "ctx_b": "scrub the grates [step] with a brush.",
            "ctx": "unused",
            "endings": ["[substeps] Use soap.", " Rinse it [title] well. ", "Stop.", "Go."],
            "label": "1",
        },
        {  # ActivityNet-style: ctx_b.capitalize() lower-cases the rest of it
            "ind": 9,
            "activity_label": "Removing ice from car",
            "ctx_a": "Then, the man writes over the snow.",
            "ctx_b": "the man in the CAR waves.",
            "ctx": "unused",
            "endings": ["  drives away.", "waves back.", "sits.", "runs."],
            "label": "0",
        },
        {
            "ind": 11,
            "activity_label": "x",
            "ctx_a": "a",
            "ctx_b": "b",
            "ctx": "",
            "endings": ["1", "2", "3", "4"],
            "label": "",
        },
        {
            "ind": 12,
            "activity_label": "x",
            "ctx_a": "a",
            "ctx_b": "b",
            "ctx": "",
            "endings": ["1", "2"],
            "label": "5",
        },
    ]
    path = write_parquet(
        str(tmp_path / "hs/data/validation-00000-of-00001.parquet"), rows, HELLASWAG
    )
    write_parquet(str(tmp_path / "hs/data/test-00000-of-00001.parquet"), rows[2:3], HELLASWAG)
    items, errors = items_and_errors("hellaswag", str(tmp_path / "hs"))
    # worked by hand from lm-eval's rule: " [title]" -> ". ", drop [..], one "  " -> " " pass
    assert items == [
        ChoiceItem(
            id="7",
            context="Home and Garden: How to clean a grill. Heat the grill. Scrub the grates with a brush.",
            endings=(" Use soap.", "Rinse it. well.", "Stop.", "Go."),
            label=1,
        ),
        ChoiceItem(
            id="9",
            context="Removing ice from car: Then, the man writes over the snow. The man in the car waves.",
            endings=("drives away.", "waves back.", "sits.", "runs."),
            label=0,
        ),
    ]
    assert [e.where for e in errors] == [f"{path} row 2", f"{path} row 3"]
    assert "not an integer" in errors[0].reason and "out of range" in errors[1].reason


def test_jsonl_pairs_relative_paths_text_and_bad_lines(tmp_path):
    data = tmp_path / "bench"
    (data / "clips").mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        (data / "clips" / name).write_bytes(wav_bytes(300))
    absolute = tmp_path / "abs.wav"
    absolute.write_bytes(wav_bytes(500))
    lines = [
        json.dumps(
            {"id": "p1", "positive": "clips/a.wav", "negative": str(absolute), "subtask": "lex"}
        ),
        json.dumps({"id": "p2", "positive": {"text": "the cat"}, "negative": {"text": "cat the"}}),
        "",
        "{not json",
        json.dumps({"id": "p3", "positive": "clips/a.wav"}),
        json.dumps({"id": "p4", "positive": "clips/none.wav", "negative": "clips/b.wav"}),
        json.dumps({"id": "p5", "positive": {"text": "x"}, "negative": "clips/b.wav"}),
        json.dumps(["a", "b"]),
        json.dumps({"id": "p6", "positive": {"audio": "clips/b.wav"}, "negative": "clips/a.wav"}),
    ]
    path = data / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items, errors = items_and_errors("jsonl", str(path))
    assert [(i.id, i.subtask) for i in items] == [("p1", "lex"), ("p2", ""), ("p6", "")]
    assert items[0].positive.audio == os.path.join(str(data), "clips/a.wav")
    assert items[0].negative.audio == str(absolute)
    assert (items[1].positive.text, items[1].negative.text) == ("the cat", "cat the")
    assert items[2].positive.audio == os.path.join(str(data), "clips/b.wav")
    assert [e.where for e in errors] == [f"{path} line {n}" for n in (4, 5, 6, 7, 8)]
    reasons = [e.reason for e in errors]
    assert "JSON" in reasons[0] and "negative" in reasons[1] and "none.wav" in reasons[2]
    assert "text" in reasons[3] and "audio" in reasons[3] and "object" in reasons[4]


def test_spoken_storycloze_folder(tmp_path):
    root = tmp_path / "sSC"
    root.mkdir()
    for k in (0, 1, 10):
        (root / f"{k}_correct.wav").write_bytes(wav_bytes(200 + k))
        (root / f"{k}_incorrect.wav").write_bytes(wav_bytes(600 + k))
    (root / "2_a.wav").write_bytes(wav_bytes(1))  # names that do not say which is true
    (root / "2_b.wav").write_bytes(wav_bytes(2))
    (root / "notes.wav").write_bytes(wav_bytes(3))
    for task in ("sstorycloze", "tstorycloze"):
        items, errors = items_and_errors(task, str(root))
        assert [i.id for i in items] == ["0", "1", "10"]
        for i in items:
            assert i.positive.audio == str(root / f"{i.id}_correct.wav")
            assert i.negative.audio == str(root / f"{i.id}_incorrect.wav")
        assert len(errors) == 2
        assert "notes.wav" in errors[0].where and "2_a.wav, 2_b.wav" in errors[1].reason
