"""The preprocessing job: inputs -> (codec stage) -> (token stage) -> shards, stats, errors.

Outputs for ``--output-prefix P`` (``P`` gains ``_{I:05d}_of_{K:05d}`` with ``--num-shards K``):

* ``P.bin``/``P.idx`` (or ``P_train.*`` and ``P_valid.*`` with ``--split``)
* ``P.stats.json`` (and one per split): documents, utterances, audio hours, tokens by kind,
  errors, and the token layout the trainer checks against its tokenizer
* ``P.errors.jsonl``: one line per rejected input (file, item, reason, stage)

One run writes a prefix at a time: the run holds ``P.lock`` (:class:`OutputLock`; a stale lock of
a dead run is taken over) and a second one stops with :class:`OutputLocked`.  The shards are
flushed to disk, then their stats written (recording the files they describe under ``files``:
the ``.bin`` size, the ``.idx`` size and sha256), then the shards renamed into place: a crash
leaves the old shards with new stats at worst, which the trainer refuses (the files differ from
the record), never new shards that old stats would vouch for.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

from megatron_soda import atomic_files
from megatron_soda.audio.codec_spec import codec_fingerprint, parse_codec_spec
from megatron_soda.data.codec_workers import describe_exits
from megatron_soda.data.codes_cache import UnitCache
from megatron_soda.data.encode_stage import CodecWorkers, EncodeConfig, encode_units, unit_caches
from megatron_soda.data.readers import INPUT_FORMATS, SFT_FORMATS, SPEECH_FORMATS
from megatron_soda.data.sft_stage import sft_record, tokenize_cached_pairs
from megatron_soda.data.shards import TMP_SUFFIX
from megatron_soda.data.tokenize_stage import (
    OutputSet,
    SplitStats,
    tokenize_cached_units,
    tokenize_text_units,
)
from megatron_soda.data.units import WorkUnit, expand_inputs, plan_units
from megatron_soda.format import DEFAULT_NUM_CODEBOOKS
from megatron_soda.format.sft import PROMPT_ENDS
from megatron_soda.format.shard_verify import IDENTITY_KEY
from megatron_soda.output_lock import OutputLock
from megatron_soda.tokenizer import SodaTokenizer

logger = logging.getLogger(__name__)
STAGES = ("all", "encode", "tokenize")


class PreprocessError(RuntimeError):
    """A run that cannot proceed (bad arguments, missing cache); the message says why."""


CODEC_REQUIRED = (
    "--codec is required for speech input; there is no default, because codes from a codec with "
    "random weights train a model on noise. Weights are never downloaded at run time: fetch "
    "Mimi once with `hf download kyutai/mimi` (into the Hugging Face cache) and pass --codec "
    "kyutai/mimi, or `hf download kyutai/mimi --local-dir DIR` and pass --codec DIR. For tests "
    "and demos only: --codec random:tiny (or random:full), recorded as random in P.stats.json"
)


@dataclass
class PreprocessConfig:
    inputs: list[str]
    input_format: str
    output_prefix: str
    tokenizer: str
    codec: str | None = None  # required for speech input: there is no default (see CODEC_REQUIRED)
    num_codebooks: int | None = None  # None: a saved tokenizer directory's, else the default
    cache_codebooks: int | None = None  # default max(num_codebooks, DEFAULT_NUM_CODEBOOKS)
    interleave: str = "both"
    workers: int = 1
    threads_per_worker: int | None = None
    codec_precision: str = "fp32"  # "bf16": opt-in, faster on CPU, some codes differ
    codec_batching: str | None = None  # "pieces" | "duration"; None: duration on a GPU (codec_workers)
    device: str = "cpu"
    valid_fraction: float = 0.0  # held out by recording-id hash (--valid-fraction; was --split)
    num_shards: int = 1
    shard_index: int = 0
    codes_dir: str | None = None  # default: {output_prefix}.codes (shared by all shards)
    stage: str = "all"
    json_keys: tuple[str, ...] = ("text",)
    max_error_rate: float = 0.01
    chunk_utterances: int = 128
    job_utterances: int | None = None  # utterances per codec job at most (None: encode_jobs' default)
    # speech-to-speech pairs (--input-format cvss|s2st-jsonl): S2ST documents + loss starts
    sft_prompt_end: str = "source_audio"  # where the instruction ends (format/sft.py)
    data_split: str = "train"  # cvss: the split a directory --input contributes
    cvss_source_root: str | None = None  # cvss: Common Voice clips + CoVoST 2 TSVs

    @property
    def sft(self) -> bool:
        return self.input_format in SFT_FORMATS

    @property
    def shard_prefix(self) -> str:
        if self.num_shards == 1:
            return self.output_prefix
        return f"{self.output_prefix}_{self.shard_index:05d}_of_{self.num_shards:05d}"

    @property
    def resolved_codes_dir(self) -> str:
        return self.codes_dir or f"{self.output_prefix}.codes"

    def encode_config(self, num_codebooks: int) -> EncodeConfig:
        """The codec stage's settings, for a tokenizer of ``num_codebooks`` codebooks."""
        if self.codec is None:
            raise PreprocessError(CODEC_REQUIRED)
        return EncodeConfig(
            codec=self.codec,
            cache_codebooks=self.cache_codebooks or max(num_codebooks, DEFAULT_NUM_CODEBOOKS),
            device=self.device,
            workers=self.workers,
            threads_per_worker=self.threads_per_worker,
            chunk_utterances=self.chunk_utterances,
            job_utterances=self.job_utterances,
            precision=self.codec_precision,
            batching=self.codec_batching,
        )


def run_preprocess(cfg: PreprocessConfig) -> dict:
    """Run the job; returns the summary (also written to ``P.stats.json``)."""
    if cfg.input_format not in INPUT_FORMATS:
        raise PreprocessError(
            f"--input-format must be one of {INPUT_FORMATS}, got {cfg.input_format!r}"
        )
    if cfg.stage not in STAGES:
        raise PreprocessError(f"--stage must be one of {STAGES}")
    if not 0 <= cfg.valid_fraction < 1:
        raise PreprocessError(f"--valid-fraction must be in [0, 1), got {cfg.valid_fraction}")
    if cfg.input_format in SPEECH_FORMATS and cfg.codec is None:
        raise PreprocessError(CODEC_REQUIRED)  # before any input is read or output written
    if cfg.sft and cfg.sft_prompt_end not in PROMPT_ENDS:
        raise PreprocessError(f"--sft-prompt-end must be one of {PROMPT_ENDS}, got {cfg.sft_prompt_end!r}")
    if cfg.job_utterances is not None and cfg.job_utterances < 1:
        raise PreprocessError(f"--job-utterances must be >= 1, got {cfg.job_utterances}")
    if cfg.input_format == "cvss" and not cfg.cvss_source_root:
        raise PreprocessError("--input-format cvss needs --cvss-source-root: the directory of the "
                              "Common Voice clips and the CoVoST 2 TSVs (docs/finetuning.md)")
    with output_locked(cfg.shard_prefix):
        return _run_locked(cfg)


def output_locked(prefix: str) -> OutputLock:
    """The lock of output prefix ``prefix`` (``prefix.lock``), for a ``with`` block: held for a
    whole run; :class:`~megatron_soda.output_lock.OutputLocked` (naming the holder) when another
    live run holds it."""
    return _LoggedLock(prefix + ".lock", "preprocessing run")


class _LoggedLock(OutputLock):
    def acquire(self) -> None:
        super().acquire()
        if self.took_over:
            t = self.took_over
            logger.warning("%s: took over the lock of a run that is gone (host %s, pid %s: %s)",
                           self.path, t.get("host"), t.get("pid"), t.get("reason"))


def _run_locked(cfg: PreprocessConfig) -> dict:
    try:
        files = expand_inputs(cfg.inputs, cfg.input_format, cfg.data_split)
        units = plan_units(files, cfg.input_format, cfg.num_shards, cfg.shard_index,
                           cfg.cvss_source_root)
    except ValueError as e:
        raise PreprocessError(str(e)) from e
    speech = cfg.input_format != "text"
    encoding = speech and cfg.stage in ("all", "encode")
    # started first: the workers' fork server imports torch and the codec meanwhile
    workers = CodecWorkers(cfg.workers, cfg.threads_per_worker, cfg.device, cfg.codec_batching) if encoding else None
    try:
        return _run_with(cfg, units, files, workers)
    except BaseException as e:
        if workers is not None:
            workers.close(wait_for_workers=False)
            if isinstance(e, BrokenProcessPool):
                logger.error("codec workers: %s", describe_exits(workers.processes))
        raise


def _run_with(
    cfg: PreprocessConfig, units: list[WorkUnit], files: list[str], workers: CodecWorkers | None
) -> dict:
    tokenizer = SodaTokenizer.load(cfg.tokenizer, num_codebooks=cfg.num_codebooks)
    speech = cfg.input_format != "text"
    logger.info(
        "%d input files, %d work units for slice %d/%d",
        len(files),
        len(units),
        cfg.shard_index,
        cfg.num_shards,
    )

    caches = []
    if speech:
        ecfg = cfg.encode_config(tokenizer.layout.num_codebooks)
        if workers is not None:
            if cfg.stage == "all" and workers.pool is not None:
                _preload_shard_writer()
            caches = encode_units(units, cfg.resolved_codes_dir, ecfg, workers)
            # the codec's memory freed before the token stage; worker processes exit meanwhile
            workers.close(wait_for_workers=False)
        else:
            caches = _cached_units(cfg, units, ecfg, tokenizer.layout.num_codebooks)
    if cfg.stage == "encode":
        return {"stage": "encode", "units": len(units), "codes_dir": cfg.resolved_codes_dir}

    out = OutputSet(cfg.shard_prefix, cfg.valid_fraction, sft=cfg.sft)
    try:
        if cfg.sft:
            tokenize_cached_pairs(caches, tokenizer, cfg.sft_prompt_end, out)
        elif speech:
            tokenize_cached_units(caches, tokenizer, cfg.interleave, out)
        else:
            tokenize_text_units(units, tokenizer, out, cfg.json_keys)
        files = out.close()  # flushed, not yet visible
        summary = write_reports(cfg, tokenizer, out, files)  # the stats first, durably
        out.publish()
    except BaseException:
        out.abort()
        raise
    return summary


def _preload_shard_writer() -> None:
    """Import megatron-core (the shard writer's ``IndexedDatasetBuilder``: about 2 s) in a
    thread of this process while its codec workers start and encode, instead of after them.
    Only with worker processes: in this process the codec's own imports would run beside it.
    megatron's import-time warnings (no TE/apex) are silenced by a filter set here, in the main
    thread, for the whole run: ``warnings.catch_warnings`` inside the thread would swap the
    process-wide filter list under the main thread."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    threading.Thread(target=_import_quietly, name="preload-megatron", daemon=True).start()


def _import_quietly() -> None:
    try:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401
    except Exception:  # the token stage imports it again (indexed_dataset_builder) and reports it
        pass


def _cached_units(
    cfg: PreprocessConfig, units: list[WorkUnit], ecfg: EncodeConfig, num_codebooks: int
) -> list[UnitCache]:
    """``--stage tokenize``: the complete caches of the units, each made (its ``unit.json``
    says) from the same input with the same codec and holding at least the codebooks asked for
    (``--cache-codebooks`` if given, else the tokenizer's)."""
    ecfg = replace(ecfg, cache_codebooks=cfg.cache_codebooks or num_codebooks)
    caches = unit_caches(cfg.resolved_codes_dir, units, ecfg)
    if cfg.codec_batching is None:  # not asked for: codes of either batching mode (a GPU's) serve
        caches = [_as_stored_batching(c) for c in caches]
    unusable = [c for c in caches if not c.is_complete()]
    if unusable:
        c, more = unusable[0], f" (and {len(unusable) - 1} more)" if len(unusable) > 1 else ""
        why = c.mismatch() or "the codec stage did not finish"
        raise PreprocessError(
            f"--stage tokenize: no usable codes cache in {cfg.resolved_codes_dir} for "
            f"{c.description['input']}{more}: {why}; run --stage encode (or all) first with the "
            "same inputs, codec and --codes-dir"
        )
    for c in caches:  # chunks damaged since they were written (logged and redone by encode)
        damaged = c.damaged_chunks()
        if damaged:
            raise PreprocessError(
                f"--stage tokenize: {damaged[0][1]} ({len(damaged)} damaged chunk(s) in {c.dir}); "
                "run --stage encode (or all) with the same arguments to encode them again"
            )
    return caches


def _as_stored_batching(cache: UnitCache) -> UnitCache:
    """``cache`` expecting the batching mode its ``unit.json`` records, all else equal."""
    stored = cache.stored_description() or {}
    key = "codec_batching"
    if stored.get(key) == cache.description.get(key):
        return cache
    want = {k: v for k, v in cache.description.items() if k != key}
    if key in stored:
        want[key] = stored[key]
    return UnitCache(cache.dir, want)


def _header(cfg: PreprocessConfig, tokenizer: SodaTokenizer) -> dict:
    """How the shard was made.  ``codec_fingerprint`` identifies the codes (the trainer refuses a
    blend that mixes fingerprints); ``split_fraction`` is the --valid-fraction (old name kept)."""
    speech = cfg.input_format in SPEECH_FORMATS
    extra = {}
    if cfg.codec_precision != "fp32" and speech:
        extra["codec_precision"] = cfg.codec_precision
    if speech:
        ecfg = cfg.encode_config(tokenizer.layout.num_codebooks)
        extra["codec_random"] = parse_codec_spec(ecfg.codec).kind == "random"
        extra["codec_fingerprint"] = codec_fingerprint(
            ecfg.codec, ecfg.chunk_seconds, ecfg.precision, with_location=False
        )
    return {
        **extra,
        "format": cfg.input_format,
        "interleave": ("s2st" if cfg.sft else cfg.interleave) if speech else "text",
        "codec": cfg.codec if speech else None,
        "num_codebooks": tokenizer.layout.num_codebooks,
        "layout": tokenizer.layout.to_dict(),
        "tokenizer_sha256": tokenizer.base_sha256,
        "split_fraction": cfg.valid_fraction,
        "slice": {"num_shards": cfg.num_shards, "shard_index": cfg.shard_index},
        **({"sft": sft_record(cfg.sft_prompt_end, 0)} if cfg.sft else {}),
    }


def summarize_splits(
    header: dict, splits: dict[str, SplitStats], errors: int, attempted: int, collisions: int
) -> dict:
    total = SplitStats()
    for st in splits.values():
        total.merge(st)
    summary = {**header, **total.to_dict()}
    summary["errors"] = errors
    summary["attempted"] = attempted
    summary["error_rate"] = round(errors / attempted, 6) if attempted else 0.0
    summary["text_audio_char_collisions"] = collisions
    if "sft" in header:
        summary["sft"] = {**header["sft"], "documents": total.documents}
    if set(splits) != {"all"}:
        summary["splits"] = {n: st.to_dict() for n, st in splits.items()}
    return summary


def write_report_files(
    prefix: str,
    header: dict,
    splits: dict[str, SplitStats],
    summary: dict,
    errors: list[dict],
    files: dict[str, dict],
) -> None:
    """``P.stats.json`` (and ``P_{split}.stats.json`` per split side) and ``P.errors.jsonl``:
    readable JSON, keys sorted, non-ASCII text kept; durable (written before the shards they
    describe are renamed into place).  Each stats file describing a shard pair records its
    identity (``files``: ``files[split]``, from :meth:`ShardWriter.close`)."""
    style = dict(tmp_suffix=TMP_SUFFIX, ensure_ascii=False, sort_keys=True, durable=True)
    reports = {}
    if set(splits) != {"all"}:
        for name, st in splits.items():
            reports[f"{prefix}_{name}.stats.json"] = {
                **header, "split": name, **st.to_dict(), IDENTITY_KEY: files[name]
            }
        reports[prefix + ".stats.json"] = summary
    else:
        reports[prefix + ".stats.json"] = {**summary, IDENTITY_KEY: files["all"]}
    for path, report in reports.items():
        if "sft" in header:  # documents of the shard (or shards) this report describes
            report["sft"] = {**header["sft"], "documents": report["documents"]}
        atomic_files.write_json_atomic(path, report, end="\n", indent=2, **style)
    atomic_files.write_jsonl_atomic(prefix + ".errors.jsonl", errors, **style)
    atomic_files.fsync_path(os.path.dirname(os.path.abspath(prefix)))


def write_reports(
    cfg: PreprocessConfig, tokenizer: SodaTokenizer, out: OutputSet, files: dict[str, dict]
) -> dict:
    """The run's stats and error report; ``files``: each split's shard identity
    (:meth:`OutputSet.close`)."""
    header = _header(cfg, tokenizer)
    n_err = len(out.errors)
    summary = summarize_splits(header, out.stats, n_err, out.attempted, out.text_collisions)
    errors = [e.to_dict() for e in out.errors]
    write_report_files(cfg.shard_prefix, header, out.stats, summary, errors, files)
    if out.text_collisions:
        logger.warning(
            "%d transcript characters fall in the audio character range U+E000..; ids are correct, "
            "but an exported HF tokenizer would read them as audio",
            out.text_collisions,
        )
    return summary
