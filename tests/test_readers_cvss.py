"""readers/cvss.py (CVSS-T/-C + CoVoST 2 / Common Voice) and readers/s2st.py (s2st-jsonl): the
pairs each yields, and one error per bad item."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError, Recording
from megatron_soda.data.units import InputSpecError, expand_inputs, plan_units
from megatron_soda.testing.cvss_sample import make_cvss_sample

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.fixture
def sample(tmp_path):
    return make_cvss_sample(tmp_path / "s", n_pairs=4, lang="de", split="dev")


def _tsv(sample) -> str:
    return os.path.join(sample.cvss_root, sample.lang, f"{sample.split}.tsv")


def _split(items):
    items = list(items)
    recs = [i for i in items if isinstance(i, Recording)]
    return recs, [i for i in items if isinstance(i, InputError)]


def _as_pair(rec: Recording) -> dict:
    src, tgt = rec.utterances
    return {"id": rec.id, "source_audio": src.audio.path, "source_text": src.text,
            "target_audio": tgt.audio.path, "target_text": tgt.text,
            "ids": (src.id, tgt.id)}


def _expected(p: dict, lang: str) -> dict:
    return {"id": p["id"], "source_audio": p["source_audio"],
            "source_text": f"<language>{lang}</language>{p['source_text']}",
            "target_audio": p["target_audio"],
            "target_text": f"<language>en</language>{p['target_text']}",
            "ids": (p["id"] + "#source", p["id"] + "#target")}


def test_cvss_layout_yields_each_pair(sample):
    recs, errors = _split(read_source(_tsv(sample), "cvss", source_root=sample.source_root))
    assert errors == []
    assert [_as_pair(r) for r in recs] == [_expected(p, "de") for p in sample.pairs]
    for r in recs:  # the CVSS naming: the target is the source clip's name + .wav
        assert os.path.basename(r.utterances[1].audio.path) == os.path.basename(
            r.utterances[0].audio.path) + ".wav"


def test_directory_input_takes_the_split_and_plans_the_source_root(sample):
    assert expand_inputs([sample.cvss_root], "cvss", "dev") == [_tsv(sample)]
    with pytest.raises(InputSpecError, match="holds no"):
        expand_inputs([sample.cvss_root], "cvss", "train")
    (unit,) = plan_units([_tsv(sample)], "cvss", source_root=sample.source_root)
    desc = unit.describe()
    assert desc["source_root"] == os.path.abspath(sample.source_root)
    assert desc["companions"][0]["path"].endswith("covost_v2.de_en.tsv")


def test_cvss_language_codes_follow_covost(tmp_path):
    """CVSS's ``sv`` directory pairs with CoVoST's ``sv-SE`` TSV, and the tag is ``sv-SE``."""
    s = make_cvss_sample(tmp_path / "s", n_pairs=1, lang="de", split="train")
    os.rename(os.path.join(s.cvss_root, "de"), os.path.join(s.cvss_root, "sv"))
    os.rename(os.path.join(s.source_root, "de"), os.path.join(s.source_root, "sv-SE"))
    os.rename(os.path.join(s.source_root, "sv-SE", "covost_v2.de_en.tsv"),
              os.path.join(s.source_root, "sv-SE", "covost_v2.sv-SE_en.tsv"))
    (rec,) = read_source(os.path.join(s.cvss_root, "sv", "train.tsv"), "cvss", source_root=s.source_root)
    assert rec.utterances[0].text == "<language>sv-SE</language>" + s.pairs[0]["source_text"]


def test_cvss_bad_items_are_reported_one_by_one(sample):
    p = sample.pairs
    os.remove(p[0]["target_audio"])
    os.remove(p[1]["source_audio"])
    with open(_tsv(sample), "a", encoding="utf-8") as f:
        f.write("only_one_column\n")
        f.write("common_voice_de_9.mp3\tUnknown.\n")  # not in the CoVoST TSV
    recs, errors = _split(read_source(_tsv(sample), "cvss", source_root=sample.source_root))
    assert [r.id for r in recs] == [p[2]["id"], p[3]["id"]]
    got = [(e.item, e.reason) for e in errors]
    assert len(got) == 4
    assert got[0][0].startswith(p[0]["id"]) and f"target clip {p[0]['target_audio']} not found" in got[0][1]
    assert got[1][0].startswith(p[1]["id"]) and f"source clip {p[1]['source_audio']} not found" in got[1][1]
    assert got[2][0] == "line 5" and "expected 2 tab-separated columns" in got[2][1]
    assert got[3][0].startswith("common_voice_de_9.mp3") and "no transcript" in got[3][1]


@pytest.mark.parametrize("break_it,match", [
    (lambda s: None, "needs --cvss-source-root"),
    (lambda s: os.remove(os.path.join(s.source_root, "de", "covost_v2.de_en.tsv")), "no covost_v2.de_en.tsv"),
])
def test_cvss_file_level_errors(sample, break_it, match):
    break_it(sample)
    root = None if "source-root" in match else sample.source_root
    (err,) = read_source(_tsv(sample), "cvss", source_root=root)
    assert isinstance(err, InputError) and err.item == "<file>" and match in err.reason


def test_s2st_jsonl_pairs_and_errors(sample, tmp_path):
    path = sample.write_jsonl(str(tmp_path / "pairs.jsonl"))
    recs, errors = _split(read_source(path, "s2st-jsonl"))
    assert errors == [] and [_as_pair(r) for r in recs] == [_expected(p, "de") for p in sample.pairs]
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    del rows[1]["target_text"]
    rows[2]["source_audio"] = "nowhere.mp3"
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    recs, errors = _split(read_source(path, "s2st-jsonl"))
    assert [r.id for r in recs] == [sample.pairs[0]["id"], sample.pairs[3]["id"]]
    reasons = [e.reason for e in errors]
    assert "'target_text'" in reasons[0] and "source clip" in reasons[1] and "not JSON" in reasons[2]
