"""Concept files: sentences with one anchor word each.

Two formats:

* the paper's: a Python file holding a dict literal ``{concept: [(sentence, anchor), ...]}``,
  as ``get_features/taxonomy_sentences.py`` lines 15-192 of ``Woodygan/TextSteersVision`` (read
  with :mod:`ast`, never executed: ``--concept NAME`` picks the key when there are several);
* JSONL: one ``{"sentence": ..., "anchor": ...}`` per line (a ``"concept"`` key optional).

An item whose anchor is not a whole word of its sentence is reported (:class:`ConceptError`
with file and line) and left out; the authors skip it with a warning
(``get_features_mean_shift.py`` lines 61-63).  So is an element of a ``.py`` concept list that
is not a (sentence, anchor) pair of strings (the other elements are kept).  A file holding
several concepts (either format) needs ``--concept``; one that is not UTF-8 is refused.
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


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConceptFileError(f"{path}: not UTF-8 text ({e})") from e


def _python_concepts(path: str) -> dict[str, tuple[list[tuple[str, str, int]], list[ConceptError]]]:
    """Every dict literal ``{str: [(str, str), ...]}`` in the file: per key, its pairs with line
    numbers and the elements that are not a pair of strings (reported, the others kept).  A key
    none of whose elements is a pair is not a concept (another dict of the file)."""
    try:
        tree = ast.parse(_read_text(path), path)
    except SyntaxError as e:
        raise ConceptFileError(f"{path}: not a Python file ({e})") from e
    found: dict[str, tuple[list[tuple[str, str, int]], list[ConceptError]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)
                    and isinstance(value, (ast.List, ast.Tuple))):
                continue
            pairs, errors = [], []
            for elt in value.elts:
                try:
                    pair = ast.literal_eval(elt)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pair = None
                if isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair):
                    pairs.append((pair[0], pair[1], elt.lineno))
                else:
                    errors.append(ConceptError(f"{path}:{elt.lineno}", "not a (sentence, anchor) pair "
                                                                       f"of strings: {ast.unparse(elt)[:80]}"))
            if pairs:
                found[key.value] = (pairs, errors)
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
        pairs, errors = table[concept]
        items = [ConceptItem(s, a, f"{path}:{line}") for s, a, line in pairs]
    else:
        errors = []
        names = set()
        for n, line in enumerate(_read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
                sentence, anchor = rec["sentence"], rec["anchor"]
                if not isinstance(sentence, str) or not isinstance(anchor, str):
                    raise TypeError("sentence and anchor must be strings")
                if not isinstance(rec.get("concept", ""), str):
                    raise TypeError("concept must be a string")
            except (ValueError, KeyError, TypeError) as e:
                errors.append(ConceptError(where, f"not a {{\"sentence\", \"anchor\"}} record ({e})"))
                continue
            if concept is not None and rec.get("concept", concept) != concept:
                continue
            names.add(rec.get("concept"))
            items.append(ConceptItem(sentence, anchor, where))
        if concept is None:
            named = sorted(n for n in names if n)
            if len(named) > 1:
                raise ConceptFileError(f"{path}: holds concepts {', '.join(named)}: choose one with --concept")
            concept = named[0] if named else "concept"
    good = []
    for it in items:
        err = _check(it)
        if err is None:
            good.append(it)
        else:
            errors.append(err)
    return concept, good, errors
