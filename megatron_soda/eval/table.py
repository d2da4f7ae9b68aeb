"""``python -m megatron_soda.eval table RESULT.json ...``: SODA's results table from the
results files of ``likelihood``/``pairs``/``asr``/``tts`` (Markdown, plus JSON with ``--json``).

Columns follow the SODA paper's table: LibriSpeech test-clean WER (ASR), Seed-TTS WER and speaker
similarity (TTS), then accuracies in percent: SALMon (all sub-tasks pooled: 8 x 200 pairs, so
the pooled accuracy is the sub-task mean), sBLIMP, sWUGGY, tBLIMP, tWUGGY, sStoryCloze,
tStoryCloze, HellaSwag (``acc_norm``).  The reference row is what an aggregator page reports for
SODA (SODA_SPEC.md section 6; model size not stated there)."""

from __future__ import annotations

import argparse
import json
import os

COLUMNS = [  # (key, header, scale)
    ("asr_wer", "LS-clean WER", 100.0),
    ("tts_wer", "Seed-TTS WER", 100.0),
    ("tts_sim", "Seed-TTS SIM", 1.0),
    ("salmon", "SALMon", 100.0),
    ("sblimp", "sBLIMP", 100.0),
    ("swuggy", "sWUGGY", 100.0),
    ("tblimp", "tBLIMP", 100.0),
    ("twuggy", "tWUGGY", 100.0),
    ("sstorycloze", "sSC", 100.0),
    ("tstorycloze", "tSC", 100.0),
    ("hellaswag", "HellaSwag", 100.0),
    ("s2st_asr_bleu", "CVSS ASR-BLEU", 1.0),  # sacrebleu's 0-100 scale
    ("s2st_text_bleu", "CVSS text BLEU", 1.0),
    ("s2st_sim", "CVSS SIM", 1.0),
]
REPORTED_SODA = {"asr_wer": 0.050, "tts_wer": 0.061, "salmon": 0.706, "sblimp": 0.524,
                 "swuggy": 0.618, "tblimp": 0.713, "twuggy": 0.748, "hellaswag": 0.526}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="RESULT.json files of one model")
    p.add_argument("--name", default=None, help="row name (default: the model path)")
    p.add_argument("--output", default=None, help="write the Markdown table here too")
    p.add_argument("--json", action="store_true", help="print the row as JSON")


def collect(paths: list[str]) -> tuple[dict[str, float], str | None]:
    """Metric per column key from results files; the model source seen in them."""
    row: dict[str, float] = {}
    model = None
    for path in paths:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        model = model or (r.get("model") or {}).get("source")
        if "tasks" in r:  # likelihood: every task of a prepared directory
            for name, m in r["tasks"].items():
                row[name] = m["accuracy"]
        elif "task" in r and "accuracy" in r:  # pairs
            row[r["task"]] = r["accuracy"]
        elif "asr_bleu" in r:  # s2st
            row["s2st_asr_bleu"], row["s2st_text_bleu"] = r["asr_bleu"], r["text_bleu"]
            row["s2st_sim"] = r["speaker_similarity"]
        elif "speaker_similarity" in r:  # tts
            row["tts_wer"], row["tts_sim"] = r["wer"], r["speaker_similarity"]
        elif "wer" in r:  # asr
            row["asr_wer"] = r["wer"]
        else:
            raise ValueError(f"{path}: not a results file of megatron_soda.eval")
    return row, model


def _cell(value: float | None, key: str, scale: float) -> str:
    if value is None:  # a metric written as null (nothing scored, NaN)
        return "n/a"
    return f"{value:.3f}" if key.endswith("_sim") else f"{value * scale:.1f}"  # SIM: a cosine


def markdown(rows: dict[str, dict[str, float]]) -> str:
    keys = [k for k, _, _ in COLUMNS if any(k in r for r in rows.values())] or [k for k, _, _ in COLUMNS]
    head = {k: (h, s) for k, h, s in COLUMNS}
    lines = ["| model | " + " | ".join(head[k][0] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for name, r in rows.items():
        cells = [_cell(r[k], k, head[k][1]) if k in r else "" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    row, model = collect(args.results)
    name = args.name or (os.path.basename(os.path.normpath(model)) if model else "model")
    text = markdown({name: row, "SODA (reported)": REPORTED_SODA})
    print(json.dumps(row, indent=2) if args.json else text, end="")
    if args.output:
        from megatron_soda.atomic_files import write_text_atomic

        write_text_atomic(args.output, text)
    return 0
