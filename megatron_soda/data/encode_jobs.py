"""The codec stage's work units: bounded jobs of utterances, re-joined per recording.

A chunk (whole recordings, :func:`megatron_soda.data.encode_stage.chunk_stream`) is planned
into jobs of at most ``job_utterances`` utterances: whole recordings are grouped while they
fit, and a recording with more utterances than that is cut, at utterance boundaries, into
``ceil(n / job_utterances)`` parts of near-equal size, each a job of its own.  Jobs go to
whichever worker is free; the main process re-joins each recording's parts in order
(:func:`rejoin`) before the chunk is written, so a recording holding most of the audio is
encoded by every worker at once, and its document is still assembled whole by the token stage.

The measure is utterances, not audio seconds: the count is known from the manifest alone (a
whole-file utterance's length is known only once its file is decoded), so the plan depends on
nothing but the chunk's content and a test can check it; and on CPU each utterance costs a
fixed ~20 ms forward call besides its ~77 ms per audio second (issue 19), so utterances are
part of the cost anyway.

The outcome of an utterance never depends on the plan (chunk files are byte-identical whatever
``job_utterances`` and ``--workers``):

* a part's utterances carry their recording's first utterance name for each source (what a
  source's error messages name) and no ``expected_duration`` unless the recording holds that
  source whole, as when the recording is encoded in one job;
* a failure that rejects a whole source (unreadable, truncated, an unforeseen exception while
  decoding it) in one part rejects that source's utterances in every part, and one that rejects
  a whole part (an unforeseen exception outside any source) rejects the whole recording;
* errors are listed as one job lists them: by source (first appearance), then by utterance.

Cost of cutting: each part opens its sources again.  WAV/FLAC seek to the part's first segment
(``audio/streaming.py``); other containers holding many utterances of one recording (a
YODAS2 video's audio) are decoded from their start by every part, about ``parts / 2`` extra
decodes of the source (decoding is ~1% of the encoder's time per pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from megatron_soda.data.codes_cache import Chunk, EncodedRecording, EncodedUtterance
from megatron_soda.data.records import InputError, Recording

# On CPU: the per-job cost (a process round trip, opening the sources) is small beside one
# utterance's forward pass, and the last job of a run is at most this many utterances long.
CPU_JOB_UTTERANCES = 16
SCOPES = ("utterance", "source", "recording")


@dataclass(frozen=True)
class Part:
    """Utterances ``start:stop`` of recording ``recording`` (its index in the chunk)."""

    recording: int
    start: int
    stop: int


@dataclass(frozen=True)
class Failure:
    """An utterance's audio rejected: why, and how far the cause reaches (``SCOPES``)."""

    reason: str
    scope: str = "utterance"


Encoded = tuple[float, np.ndarray]  # (seconds, int16 codes [codebooks, frames])
Outcome = Encoded | Failure


def plan_jobs(sizes: list[int], job_utterances: int) -> list[list[Part]]:
    """Jobs for recordings of ``sizes`` utterances (in chunk order): whole recordings grouped
    while the job holds at most ``job_utterances`` utterances; a larger recording cut into
    ``ceil(n / job_utterances)`` near-equal parts, one job each.  Parts are in recording and
    utterance order, so concatenating the jobs' parts walks the chunk in order."""
    if job_utterances < 1:
        raise ValueError(f"job_utterances must be >= 1, got {job_utterances}")
    jobs: list[list[Part]] = []
    cur: list[Part] = []
    held = 0
    for r, n in enumerate(sizes):
        if n > job_utterances:
            if cur:
                jobs.append(cur)
                cur, held = [], 0
            k = -(-n // job_utterances)
            bounds = [n * i // k for i in range(k + 1)]
            jobs.extend([Part(r, a, b)] for a, b in zip(bounds, bounds[1:]))
            continue
        if cur and held + n > job_utterances:
            jobs.append(cur)
            cur, held = [], 0
        cur.append(Part(r, 0, n))
        held += n
    if cur:
        jobs.append(cur)
    return jobs


def source_groups(rec: Recording) -> dict[str, list[int]]:
    """Utterance indices of each source of ``rec``, sources in order of first appearance (the
    order a job decodes them, and lists their errors)."""
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(rec.utterances):
        groups.setdefault(u.audio.source_key(), []).append(i)
    return groups


def part_recording(rec: Recording, part: Part) -> Recording:
    """What a worker gets for ``part``: the recording itself when the part is all of it, else
    a recording of those utterances whose audio references name each source as the whole
    recording's first utterance of it does, with ``expected_duration`` kept only where the
    recording holds the source whole (one utterance): so that the part's error messages and
    checks are those of the whole recording (see the module docstring)."""
    if part.start == 0 and part.stop == len(rec.utterances):
        return rec
    groups = source_groups(rec)
    utts = []
    for u in rec.utterances[part.start : part.stop]:
        idxs = groups[u.audio.source_key()]
        head = rec.utterances[idxs[0]].audio
        kept = u.audio.expected_duration if len(idxs) == 1 else None
        audio = dataclasses.replace(u.audio, name=head.name, expected_duration=kept)
        utts.append(dataclasses.replace(u, audio=audio))
    return Recording(rec.id, rec.source, utts)


def rejoin(
    rec: Recording, outcomes: list[Outcome]
) -> tuple[list[Encoded | None], list[InputError]]:
    """A recording's utterances from its parts' outcomes (in utterance order): per utterance
    ``(seconds, codes)`` or None, and the errors, as one job encoding it whole would give."""
    if len(outcomes) != len(rec.utterances):
        raise ValueError(f"{rec.id}: {len(outcomes)} outcomes for {len(rec.utterances)} utterances")
    whole = next((o for o in outcomes if isinstance(o, Failure) and o.scope == "recording"), None)
    if whole is not None:
        errors = [InputError(rec.source, u.id, whole.reason, stage="audio") for u in rec.utterances]
        return [None] * len(outcomes), errors
    encoded: list[Encoded | None] = [None] * len(outcomes)
    errors = []
    for idxs in source_groups(rec).values():
        src = next(
            (
                outcomes[i]
                for i in idxs
                if isinstance(outcomes[i], Failure) and outcomes[i].scope == "source"
            ),
            None,
        )
        for i in idxs:
            out = src or outcomes[i]
            if isinstance(out, Failure):
                errors.append(
                    InputError(rec.source, rec.utterances[i].id, out.reason, stage="audio")
                )
            else:
                encoded[i] = out
    return encoded, errors


@dataclass
class ChunkJobs:
    """A chunk's recordings, read errors, job plan and jobs (futures, or results of jobs run
    in-process: per part, per utterance an outcome)."""

    recordings: list[Recording]
    read_errors: list[InputError]
    plan: list[list[Part]]
    jobs: list[Future | list[list[Outcome]]]
    # duration batching: the jobs decoded (per utterance a waveform or a Failure); this turns
    # the chunk's decoded recordings into outcomes (codec_workers.encode_decoded)
    encode: Callable[[list[Recording], list[list]], list[list[Outcome]]] | None = None

    def running(self) -> list[Future]:
        return [j for j in self.jobs if isinstance(j, Future) and not j.done()]

    def outcomes(self) -> list[list[Outcome]]:
        """Per recording, its parts' outcomes joined in order (waits for the jobs)."""
        joined: list[list[Outcome]] = [[] for _ in self.recordings]
        for job, res in zip(self.plan, self.jobs):
            for part, outs in zip(job, res.result() if isinstance(res, Future) else res):
                joined[part.recording].extend(outs)
        return joined if self.encode is None else self.encode(self.recordings, joined)

    def assemble(self) -> tuple[Chunk, dict]:
        return assemble_chunk(self.recordings, self.read_errors, self.outcomes())


def assemble_chunk(
    recordings: list[Recording], read_errors: list[InputError], outcomes: list[list[Outcome]]
) -> tuple[Chunk, dict]:
    """The chunk file's content from each recording's re-joined outcomes; plus progress counts."""
    joined = [rejoin(rec, outs) for rec, outs in zip(recordings, outcomes)]
    errors = list(read_errors) + [e for _, errs in joined for e in errs]
    chunk = Chunk(errors=errors, attempted=len(errors) - sum(e.stage == "audio" for e in errors))
    seconds = 0.0
    for rec, (utts, _) in zip(recordings, joined):
        chunk.attempted += len(rec.utterances)
        er = EncodedRecording(rec.id, rec.source)
        for u, item in zip(rec.utterances, utts):
            if item is not None:
                er.utterances.append(EncodedUtterance(u.id, u.text, item[0], item[1]))
                seconds += item[0]
        if er.utterances:
            chunk.recordings.append(er)
    counts = {
        "utterances": sum(len(r.utterances) for r in recordings),
        "seconds": seconds,
        "errors": len(errors),
    }
    return chunk, counts
