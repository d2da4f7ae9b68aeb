"""Concept files: sentences with one anchor word each.

Two formats:

* the paper's: a Python file holding a dict literal ``{concept: [(sentence, anchor), ...]}``,
  as ``get_features/taxonomy_sentences.py`` lines 14-191 of ``Woodygan/TextSteersVision`` (read
  with :mod:`ast`, never executed: ``--concept NAME`` picks the key when there are several);
* JSONL: one ``{"sentence": ..., "anchor": ...}`` per line (a ``"concept"`` key optional).

An item whose anchor is not a whole word of its sentence is reported (:class:`ConceptError`
with file and line) and left out; the authors skip it with a warning
(``get_features_mean_shift.py`` lines 61-63).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass


class ConceptFileError(ValueError):
    """The file cannot be read at all (not one item usable)."""


@dataclass(frozen=True)
class ConceptItem:
    sentence: str
    anchor: str
    where: str  # file:line, for messages

    def anchor_spans(self) -> list[tuple[int, int]]:
        """Character spans of every whole-word occurrence of the anchor (the authors mark every
        occurrence: ``get_features_mean_shift.py`` lines 57-59)."""
        pattern = r"(?<!\w)" + re.escape(self.anchor) + r"(?!\w)"
        return [(m.start(), m.end()) for m in re.finditer(pattern, self.sentence)]


@dataclass(frozen=True)
class ConceptError:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _check(item: ConceptItem) -> ConceptError | None:
    if not item.sentence.strip() or not item.anchor.strip():
        return ConceptError(item.where, "empty sentence or anchor")
    if not item.anchor_spans():
        return ConceptError(item.where, f"anchor {item.anchor!r} is not a word of the sentence "
                                        f"{item.sentence!r}")
    return None


def _python_concepts(path: str) -> dict[str, list[tuple[str, str, int]]]:
    """Every dict literal ``{str: [(str, str), ...]}`` in the file, with line numbers."""
    try:
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
    except SyntaxError as e:
        raise ConceptFileError(f"{path}: not a Python file ({e})") from e
    found: dict[str, list[tuple[str, str, int]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)
                    and isinstance(value, (ast.List, ast.Tuple))):
                continue
            pairs = []
            for elt in value.elts:
                try:
                    pair = ast.literal_eval(elt)
                except ValueError:
                    break
                if not (isinstance(pair, tuple) and len(pair) == 2
                        and all(isinstance(s, str) for s in pair)):
                    break
                pairs.append((pair[0], pair[1], elt.lineno))
            else:
                if pairs:
                    found[key.value] = pairs
    return found


def read_concepts(path: str, concept: str | None = None) -> tuple[str, list[ConceptItem], list[ConceptError]]:
    """(concept name, usable items, per-item errors) of a ``.py`` (the paper's) or JSONL file."""
    items: list[ConceptItem] = []
    if path.endswith(".py"):
        table = _python_concepts(path)
        if not table:
            raise ConceptFileError(f"{path}: no dict literal of concept -> [(sentence, anchor), ...]")
        if concept is None:
            if len(table) > 1:
                raise ConceptFileError(f"{path}: holds {len(table)} concepts ({', '.join(table)}): "
                                       "choose one with --concept")
            concept = next(iter(table))
        if concept not in table:
            raise ConceptFileError(f"{path}: no concept {concept!r} (found {', '.join(table)})")
        items = [ConceptItem(s, a, f"{path}:{line}") for s, a, line in table[concept]]
        errors: list[ConceptError] = []
    else:
        errors = []
        names = set()
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    rec = json.loads(line)
                    sentence, anchor = rec["sentence"], rec["anchor"]
                    if not isinstance(sentence, str) or not isinstance(anchor, str):
                        raise TypeError("sentence and anchor must be strings")
                except (ValueError, KeyError, TypeError) as e:
                    errors.append(ConceptError(where, f"not a {{\"sentence\", \"anchor\"}} record ({e})"))
                    continue
                if concept is not None and rec.get("concept", concept) != concept:
                    continue
                names.add(rec.get("concept"))
                items.append(ConceptItem(sentence, anchor, where))
        if concept is None:
            named = sorted(n for n in names if n)
            concept = named[0] if len(named) == 1 else "concept"
    good = []
    for it in items:
        err = _check(it)
        if err is None:
            good.append(it)
        else:
            errors.append(err)
    return concept, good, errors
