"""Command lines of the preprocessing tools (``tools/preprocess/*.py`` are thin wrappers)."""

from __future__ import annotations

import argparse
import gc
import glob
import json
import logging
import sys

from megatron_soda.data.merge import merge_outputs
from megatron_soda.data.preprocess import STAGES, PreprocessConfig, PreprocessError, run_preprocess
from megatron_soda.data.readers import INPUT_FORMATS
from megatron_soda.data.readers.cvss import SPLITS
from megatron_soda.format import DEFAULT_NUM_CODEBOOKS, INTERLEAVE_MODES
from megatron_soda.format.sft import PROMPT_ENDS
from megatron_soda.output_lock import OutputLocked

# Exit codes of preprocess_data.py (documented in its --help and docs/preprocessing.md).
EXIT_OK = 0  # done; rejected items (if any) within --max-error-rate
EXIT_CRASH = 1  # an unexpected failure of the run itself (a bug, a dead worker): traceback logged
EXIT_FATAL = 2  # unusable arguments or inputs (argparse uses 2 too); nothing was processed
EXIT_ERROR_RATE = 3  # all good output written, but more items rejected than --max-error-rate
EXIT_LOCKED = 4  # another live run writes this output prefix (P.lock); nothing was touched
EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success: outputs written, rejected fraction within --max-error-rate
  {EXIT_CRASH}  crash: an unexpected failure of the run itself (traceback in the log)
  {EXIT_FATAL}  unusable arguments or inputs (no such input, bad tokenizer, missing codes cache)
  {EXIT_ERROR_RATE}  error rate exceeded: every good item written, but the rejected fraction
     (P.errors.jsonl, one line per item) is above --max-error-rate
  {EXIT_LOCKED}  another live run writes this output prefix (it holds P.lock); nothing touched
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the epilog's layout kept."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Audio (+ transcripts) and text -> Mimi codes -> SODA token documents -> "
        "Megatron indexed shards (.bin/.idx) with stats and an error report.",
        formatter_class=_HelpFormatter,
        epilog=EXIT_CODES_HELP,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--input",
        action="extend",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, directories or globs (repeatable)",
    )
    io.add_argument("--input-format", required=True, choices=INPUT_FORMATS)
    io.add_argument("--output-prefix", required=True, metavar="P")
    io.add_argument(
        "--json-keys", nargs="+", default=["text"], help="text fields of --input-format text"
    )
    io.add_argument(
        "--cvss-source-root",
        default=None,
        metavar="DIR",
        help="--input-format cvss: the source side, Common Voice clips (DIR/<lang>/clips/) and "
        "CoVoST 2 TSVs (DIR/<lang>/covost_v2.<lang>_en.tsv); --input is the CVSS-C/-T root",
    )
    io.add_argument(
        "--sft-prompt-end",
        default="source_audio",
        choices=PROMPT_ENDS,
        help="cvss/s2st-jsonl: where the instruction (unscored prompt) ends: after the source "
        "speech, or after the source text too (format/sft.py)",
    )
    tok = p.add_argument_group("tokens")
    tok.add_argument(
        "--tokenizer", required=True, help="base tokenizer.json (or a saved SodaTokenizer dir)"
    )
    tok.add_argument(
        "--num-codebooks",
        type=int,
        default=None,
        help="1 = semantic only, 8 = SODA, up to 32; None: a saved tokenizer directory's own, else "
        f"{DEFAULT_NUM_CODEBOOKS} (given with a tokenizer directory, it must match it)",
    )
    tok.add_argument("--interleave", default="both", choices=INTERLEAVE_MODES)
    tok.add_argument(
        "--valid-fraction",
        type=float,
        default=None,
        metavar="F",
        help="held-out fraction, by recording-id hash, written to P_valid.* (the rest to P_train.*)",
    )
    tok.add_argument(
        "--split",
        default=None,
        dest="deprecated_split",
        help="--input-format cvss: the split (train, dev, test) a CVSS root contributes; "
        "otherwise a number, the deprecated spelling of --valid-fraction (pretrain_soda.py's "
        "--split is Megatron's train,valid,test weights, another thing)",
    )
    codec = p.add_argument_group("codec stage")
    codec.add_argument(
        "--codec",
        default=None,
        help="required for speech input: a local Mimi directory or a Hugging Face id already in "
        "the local cache (`hf download kyutai/mimi`, then --codec kyutai/mimi); random-weight "
        "codecs for tests and demos only: random:tiny[:seed] or random:full[:seed]",
    )
    codec.add_argument(
        "--cache-codebooks",
        type=int,
        default=None,
        help=f"codebooks kept in the codes cache (default max(--num-codebooks, {DEFAULT_NUM_CODEBOOKS}))",
    )
    codec.add_argument("--codes-dir", default=None, help="codes cache (default P.codes)")
    codec.add_argument("--device", default="cpu", help="codec device: cpu, cuda, cuda:N")
    codec.add_argument(
        "--workers",
        type=int,
        default=0,
        help="codec worker processes, one intra-op thread each on CPU (0 = one per CPU core, "
        "1 on a GPU with --codec-batching pieces; with duration they only decode); codes are "
        "identical for any value",
    )
    codec.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="intra-op threads per worker (default 1 on CPU; codes may then depend on it)",
    )
    codec.add_argument(
        "--codec-precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="bf16: encoder under bfloat16 autocast, about 2x faster on CPUs with AVX512-BF16, "
        "but a fraction of codes differ from fp32 (see docs/benchmarks.md); opt-in",
    )
    codec.add_argument(
        "--codec-batching",
        default=None,
        choices=("pieces", "duration"),
        help="pieces: workers decode and encode, one piece per pass on CPU (bit-identical for any "
        "grouping); duration: workers only decode, this process encodes each chunk in "
        "duration-sorted batches (a GPU's arrangement; a few codes may differ). Default: "
        "duration on a GPU, pieces on CPU",
    )
    codec.add_argument(
        "--chunk-utterances", type=int, default=128, help="utterances per cached chunk"
    )
    codec.add_argument(
        "--job-utterances",
        type=int,
        default=None,
        help="utterances per codec job at most: a longer recording is cut into parts that "
        "workers encode at once (default 16 on CPU, --chunk-utterances on a GPU); output "
        "identical for any value",
    )
    run = p.add_argument_group("run control")
    run.add_argument(
        "--stage",
        default="all",
        choices=STAGES,
        help="encode: codec pass only; tokenize: shards from an existing codes cache",
    )
    run.add_argument("--num-shards", type=int, default=1, help="split the work into K slices ...")
    run.add_argument(
        "--shard-index", type=int, default=0, help="... and run slice I (e.g. $SLURM_ARRAY_TASK_ID)"
    )
    run.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help=f"exit {EXIT_ERROR_RATE} (after writing all good output) above this rejected fraction",
    )
    run.add_argument("--log-level", default="INFO")
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # megatron-core (imported for the shard writer) logs its Megatron-FSDP set-up at INFO
    logging.getLogger("megatron").setLevel(max(logging.WARNING, logging.getLogger().level))


def _data_split(args: argparse.Namespace) -> str:
    """--split as a data split (cvss): train, dev or test (default train)."""
    if args.input_format != "cvss" or args.deprecated_split is None:
        return "train"
    if args.deprecated_split not in SPLITS:
        raise SystemExit(f"preprocess_data: error: --split must be one of {SPLITS} with "
                         f"--input-format cvss, got {args.deprecated_split!r}")
    return args.deprecated_split


def _valid_fraction(args: argparse.Namespace) -> float:
    """--valid-fraction, or its deprecated spelling --split (warned about), not both."""
    if args.deprecated_split is None or args.input_format == "cvss":
        return args.valid_fraction or 0.0
    try:
        args.deprecated_split = float(args.deprecated_split)
    except ValueError:
        raise SystemExit(f"preprocess_data: error: --split {args.deprecated_split!r}: a held-out "
                         "fraction (deprecated; --valid-fraction), or with --input-format cvss "
                         f"one of {SPLITS}") from None
    if args.valid_fraction is not None:
        raise SystemExit("preprocess_data: error: give --valid-fraction, not both it and --split")
    logging.getLogger(__name__).warning(
        "--split is deprecated in preprocess_data.py: use --valid-fraction %s (the same held-out "
        "fraction; pretrain_soda.py's --split means Megatron's train,valid,test weights)",
        args.deprecated_split,
    )
    return args.deprecated_split


def preprocess_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    cfg = PreprocessConfig(
        inputs=args.input,
        input_format=args.input_format,
        output_prefix=args.output_prefix,
        tokenizer=args.tokenizer,
        codec=args.codec,
        num_codebooks=args.num_codebooks,
        cache_codebooks=args.cache_codebooks,
        interleave=args.interleave,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        codec_precision=args.codec_precision,
        codec_batching=args.codec_batching,
        device=args.device,
        valid_fraction=_valid_fraction(args),
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        codes_dir=args.codes_dir,
        stage=args.stage,
        json_keys=tuple(args.json_keys),
        max_error_rate=args.max_error_rate,
        chunk_utterances=args.chunk_utterances,
        job_utterances=args.job_utterances,
        sft_prompt_end=args.sft_prompt_end,
        data_split=_data_split(args),
        cvss_source_root=args.cvss_source_root,
    )
    try:
        summary = run_preprocess(cfg)
    except OutputLocked as e:
        print(f"preprocess_data: error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except (PreprocessError, ValueError, OSError) as e:
        print(f"preprocess_data: error: {e}", file=sys.stderr)
        return EXIT_FATAL
    except Exception as e:  # a bug, not bad input (items fail one at a time, never here)
        logging.getLogger(__name__).error("run failed", exc_info=e)
        print(f"preprocess_data: crashed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_CRASH
    code = report(summary, cfg.shard_prefix, cfg.max_error_rate)
    # Everything is written and closed.  The interpreter's final garbage collection walks every
    # object torch and transformers created (measured 1.3-1.5 s of a one-utterance run's wall
    # time); frozen objects are skipped.  Exit handlers and finalizers still run.
    gc.freeze()
    return code


def report(summary: dict, prefix: str, max_error_rate: float) -> int:
    if summary.get("stage") == "encode":
        print(json.dumps(summary))
        return EXIT_OK
    keys = (
        "documents",
        "recordings",
        "utterances",
        "audio_hours",
        "tokens",
        "total_tokens",
        "errors",
        "error_rate",
    )
    print(json.dumps({"prefix": prefix, **{k: summary[k] for k in keys}}, indent=None))
    if summary["error_rate"] > max_error_rate:
        print(
            f"preprocess_data: {summary['errors']} of {summary['attempted']} inputs rejected "
            f"(rate {summary['error_rate']:.4f} > --max-error-rate {max_error_rate}); see {prefix}.errors.jsonl",
            file=sys.stderr,
        )
        return EXIT_ERROR_RATE
    return EXIT_OK


def merge_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Merge preprocessing shard outputs into one prefix.")
    p.add_argument("--output-prefix", required=True, metavar="P")
    p.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help="merge P_00000_of_K ... P_{K-1}_of_K (the names --num-shards K wrote)",
    )
    p.add_argument(
        "--inputs", nargs="+", default=None, help="explicit prefixes, merged in this order"
    )
    args = p.parse_args(argv)
    _setup_logging("INFO")
    if (args.num_shards is None) == (args.inputs is None):
        print("merge_shards: give exactly one of --num-shards or --inputs", file=sys.stderr)
        return EXIT_FATAL
    prefixes = args.inputs or [
        f"{args.output_prefix}_{i:05d}_of_{args.num_shards:05d}" for i in range(args.num_shards)
    ]
    missing = [q for q in prefixes if not glob.glob(q + "*.stats.json")]
    if missing:
        print(
            f"merge_shards: error: no finished output for {missing[0]} ({len(missing)} missing)",
            file=sys.stderr,
        )
        return EXIT_FATAL
    try:
        summary = merge_outputs(prefixes, args.output_prefix)
    except OutputLocked as e:
        print(f"merge_shards: error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except (PreprocessError, ValueError, OSError, AssertionError) as e:
        print(f"merge_shards: error: {e}", file=sys.stderr)
        return EXIT_FATAL
    print(
        json.dumps(
            {
                "prefix": args.output_prefix,
                "documents": summary["documents"],
                "total_tokens": summary["total_tokens"],
                "errors": summary["errors"],
            }
        )
    )
    return EXIT_OK
