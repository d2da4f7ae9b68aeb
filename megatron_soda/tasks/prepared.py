"""A prepared-task directory: benchmark items already tokenized, audio already encoded.

``python -m megatron_soda.eval prepare`` writes one; the standalone evaluator and the trainer's
in-training evaluation (``--eval-tasks-data``) both read it, so they score identical token
sequences, and a training run never loads a codec.

    DIR/prepared.json   {"format": "soda-eval-prepared", "version": 1, "layout": {...},
                         "text_probe": {"text": ..., "ids": [...]}, "codec": ...,
                         "codec_fingerprint": ..., "tasks": {name: {"kind", "n", "source"}}}
    DIR/<task>.jsonl    pairs:  {"id", "subtask", "positive": SEQ, "negative": SEQ}
                        choice: {"id", "subtask", "label", "choices": [SEQ + {"chars"}, ...]}
    SEQ = {"ids": [...], "span": [a, b], "modality": "audio" | "text"}

``span`` is the content range (markers excluded); which of its tokens are scored is decided when
reading, by ``score_span`` (:mod:`megatron_soda.tasks.sequences`), so one prepared directory
serves both ``all_audio`` and ``semantic`` scoring.  Everything read is validated (ids inside
the vocabulary, spans inside the sequence): the files are data, never code.  The text probe is
a behavioural check of the text tokenizer: a model whose tokenizer splits the probe
differently cannot score the prepared text items.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_soda.format.layout import TokenLayout
from megatron_soda.tasks.sequences import SCORE_SPANS, Scored
from megatron_soda.tokenizer import SodaTokenizer

FORMAT = "soda-eval-prepared"
VERSION = 1
META = "prepared.json"
TEXT_PROBE = "The quick brown fox, 1,234 jumps; over the lazy dog's back!"


class PreparedError(ValueError):
    """A prepared directory that cannot be used with this model or is malformed."""


@dataclass(frozen=True)
class PreparedPair:
    id: str
    subtask: str
    positive: Scored
    negative: Scored


@dataclass(frozen=True)
class PreparedChoice:
    id: str
    subtask: str
    label: int
    choices: tuple[Scored, ...]
    chars: tuple[int, ...]


@dataclass(frozen=True)
class PreparedTask:
    name: str
    kind: str  # "pairs" | "choice"
    items: list  # PreparedPair | PreparedChoice

    def sequences(self) -> list[Scored]:
        """Every sequence to score, items in order, members in order (pairs: +, -)."""
        if self.kind == "pairs":
            return [s for it in self.items for s in (it.positive, it.negative)]
        return [s for it in self.items for s in it.choices]


# ------------------------------------------------------------------------- writing
def sequence_record(seq: Scored, modality: str) -> dict[str, Any]:
    """SEQ for a sequence built by :mod:`~megatron_soda.tasks.sequences` with every content
    token scored (``all_audio`` / text): the span is the scored range."""
    where = np.flatnonzero(seq.scored)
    if where.size == 0 or where[-1] - where[0] + 1 != where.size:
        raise ValueError("expected a contiguous scored span")
    return {"ids": seq.ids.tolist(), "span": [int(where[0]), int(where[-1]) + 1], "modality": modality}


def write_meta(directory: str, tok: SodaTokenizer, codec: str | None, fingerprint: str | None,
               tasks: dict[str, dict[str, Any]]) -> None:
    from megatron_soda.atomic_files import write_json_atomic

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layout": tok.layout.to_dict(),
        "text_probe": {"text": TEXT_PROBE, "ids": tok.encode_text(TEXT_PROBE)},
        "codec": codec,
        "codec_fingerprint": fingerprint,
        "tasks": tasks,
    }
    write_json_atomic(os.path.join(directory, META), meta, indent=2)


# ------------------------------------------------------------------------- reading
def read_meta(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, META)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise PreparedError(
            f"{directory}: no {META} (write one with `python -m megatron_soda.eval prepare`)"
        ) from None
    except (OSError, ValueError) as e:
        raise PreparedError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PreparedError(f"{path}: not a prepared-task file (format != {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise PreparedError(f"{path}: version {meta.get('version')!r}, this reader knows {VERSION}")
    if not isinstance(meta.get("tasks"), dict):
        raise PreparedError(f"{path}: no task table")
    return meta


def check_compatible(meta: dict[str, Any], tok: SodaTokenizer, directory: str) -> None:
    """The model's tokenizer must have the prepared layout and split text the same way."""
    try:
        theirs = TokenLayout.from_dict(meta["layout"])
    except (KeyError, TypeError, ValueError) as e:
        raise PreparedError(f"{directory}/{META}: bad layout ({e})") from None
    if theirs != tok.layout:
        raise PreparedError(
            f"{directory} was prepared for layout {theirs.to_dict()}, the model's tokenizer has "
            f"{tok.layout.to_dict()}: prepare it again with this model"
        )
    probe = meta.get("text_probe") or {}
    if tok.encode_text(str(probe.get("text", ""))) != probe.get("ids"):
        raise PreparedError(
            f"{directory} was prepared with a different text tokenizer (the probe sentence "
            "tokenizes differently): prepare it again with this model"
        )


def _sequence(rec: Any, n_cb: int, vocab: int, score_span: str, where: str) -> Scored:
    try:
        ids = np.asarray(rec["ids"], dtype=np.int64)
        a, b = (int(x) for x in rec["span"])
        modality = rec["modality"]
    except (KeyError, TypeError, ValueError) as e:
        raise PreparedError(f"{where}: malformed sequence ({e})") from None
    if ids.ndim != 1 or ids.size < 2 or not 1 <= a < b <= ids.size:
        raise PreparedError(f"{where}: span {[a, b]} outside a sequence of {ids.size} ids")
    if ids.min() < 0 or ids.max() >= vocab:
        raise PreparedError(f"{where}: ids outside the vocabulary of {vocab}")
    if modality not in ("audio", "text"):
        raise PreparedError(f"{where}: modality {modality!r}")
    scored = np.zeros(ids.size, dtype=bool)
    if modality == "audio" and score_span == "semantic":
        scored[a:b:n_cb] = True
    else:
        scored[a:b] = True
    return Scored(ids, scored)


def parse_task(name: str, kind: str, records: Iterable[tuple[str, Any]], tok: SodaTokenizer,
               score_span: str = "all_audio") -> PreparedTask:
    """A task from its records: ``(where, record)`` pairs, each a dict in the file format."""
    if score_span not in SCORE_SPANS:
        raise PreparedError(f"score span {score_span!r}: choose one of {SCORE_SPANS}")
    if kind not in ("pairs", "choice"):
        raise PreparedError(f"task {name}: kind {kind!r}")
    n_cb, vocab = tok.layout.num_codebooks, tok.vocab_size
    items: list = []
    for where, rec in records:
        try:
            item_id, subtask = str(rec["id"]), str(rec.get("subtask", ""))
        except (KeyError, TypeError, AttributeError) as e:
            raise PreparedError(f"{where}: malformed ({e})") from None
        if kind == "pairs":
            pos, neg = (_sequence(rec.get(k), n_cb, vocab, score_span, f"{where} {k}")
                        for k in ("positive", "negative"))
            items.append(PreparedPair(item_id, subtask, pos, neg))
            continue
        choices = rec.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise PreparedError(f"{where}: needs a list of at least 2 choices")
        label = rec.get("label")
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise PreparedError(f"{where}: label {label!r} is not a choice index")
        seqs = tuple(_sequence(c, n_cb, vocab, score_span, f"{where} choice {i}")
                     for i, c in enumerate(choices))
        chars = tuple(int(c.get("chars", 0)) for c in choices)
        items.append(PreparedChoice(item_id, subtask, label, seqs, chars))
    return PreparedTask(name, kind, items)


def _file_records(path: str) -> Iterator[tuple[str, Any]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise PreparedError(f"{path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            try:
                yield f"{path} line {lineno}", json.loads(line)
            except ValueError as e:
                raise PreparedError(f"{path} line {lineno}: not JSON ({e})") from None


def read_task(directory: str, name: str, tok: SodaTokenizer, score_span: str = "all_audio",
              meta: dict[str, Any] | None = None) -> PreparedTask:
    meta = meta if meta is not None else read_meta(directory)
    info = meta["tasks"].get(name)
    if not isinstance(info, dict):
        raise PreparedError(f"{directory}: no task {name!r} (it has {sorted(meta['tasks'])})")
    path = os.path.join(directory, f"{name}.jsonl")
    task = parse_task(name, info.get("kind"), _file_records(path), tok, score_span)
    if info.get("n") is not None and info["n"] != len(task.items):
        raise PreparedError(f"{path}: {len(task.items)} items, {META} says {info['n']} (incomplete?)")
    return task


def read_prepared(directory: str, tok: SodaTokenizer, score_span: str = "all_audio",
                  tasks: Iterable[str] | None = None) -> dict[str, PreparedTask]:
    """The tasks of ``directory`` (all, or those named), checked against ``tok``."""
    meta = read_meta(directory)
    check_compatible(meta, tok, directory)
    names = list(tasks) if tasks is not None else sorted(meta["tasks"])
    missing = [n for n in names if n not in meta["tasks"]]
    if missing:
        raise PreparedError(f"{directory}: no prepared task {missing} (it has {sorted(meta['tasks'])})")
    return {n: read_task(directory, n, tok, score_span, meta) for n in names}


def drop_longer_than(task: PreparedTask, limit: int | None) -> tuple[PreparedTask, list[str]]:
    """``task`` without the items that have a sequence longer than ``limit`` tokens (a model's
    positions; None keeps all), and one message per item left out."""
    if limit is None:
        return task, []
    kept, errors = [], []
    for it in task.items:
        members = (it.positive, it.negative) if task.kind == "pairs" else it.choices
        longest = max(len(s) for s in members)
        if longest > limit:
            errors.append(f"item {it.id}: {longest} tokens, longer than the model's {limit} positions")
        else:
            kept.append(it)
    return PreparedTask(task.name, task.kind, kept), errors


# ------------------------------------------------------------------------- metrics
def item_results(task: PreparedTask, scores: Sequence[tuple[float, int]]) -> list[dict[str, Any]]:
    """Per item records from (sum, count) per sequence, in :meth:`PreparedTask.sequences` order."""
    from megatron_soda.tasks.scoring import choice_predictions, mean_score, pair_correct

    out, i = [], 0
    for it in task.items:
        if task.kind == "pairs":
            sp, sn = mean_score(*scores[i]), mean_score(*scores[i + 1])
            i += 2
            out.append({"id": it.id, "subtask": it.subtask, "score_positive": sp,
                        "score_negative": sn, "correct": pair_correct(sp, sn)})
        else:
            k = len(it.choices)
            sums = [scores[i + j][0] for j in range(k)]
            i += k
            raw, norm = choice_predictions(sums, it.chars)
            out.append({"id": it.id, "subtask": it.subtask, "label": it.label, "logprobs": sums,
                        "pred": raw, "pred_norm": norm, "correct": raw == it.label,
                        "correct_norm": norm == it.label})
    if i != len(scores):
        raise ValueError(f"{len(scores)} scores for {i} sequences")
    return out


def summarize(task: PreparedTask, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Task metrics from :func:`item_results`: pairs -> accuracy (and per sub-task);
    choice -> acc and acc_norm (the reported one)."""
    n = len(items)
    if task.kind == "choice":
        acc = sum(r["correct"] for r in items) / n if n else float("nan")
        norm = sum(r["correct_norm"] for r in items) / n if n else float("nan")
        return {"task": task.name, "n": n, "acc": acc, "acc_norm": norm, "accuracy": norm}
    right: Counter = Counter()
    count: dict[str, int] = defaultdict(int)
    for r in items:
        count[r["subtask"]] += 1
        right[r["subtask"]] += bool(r["correct"])
    result: dict[str, Any] = {
        "task": task.name,
        "n": n,
        "accuracy": sum(right.values()) / n if n else float("nan"),
    }
    if len(count) > 1 or "" not in count:
        result["subtasks"] = {s: {"accuracy": right[s] / count[s], "n": count[s]} for s in sorted(count)}
    return result
