"""Field names shared with the trainer and between launcher, collector and fitter.

Everything the toolkit reads from or writes for other programs is named here, so aligning with
the trainer's metrics JSONL (``--metrics-jsonl``) is a one-file change.
"""

from __future__ import annotations

# ---- trainer metrics JSONL: one JSON object per line -------------------------------------
ITERATION = "iteration"
TRAIN_LOSS = "lm_loss"
GRAD_NORM = "grad_norm"
# Eval records are told apart by either marker below; any other record is a training record.
SPLIT = "split"
EVAL_SPLITS = ("valid", "validation", "eval", "test")
KIND = "kind"
EVAL_KINDS = ("eval", "valid", "validation")
# Held-out loss field of an eval record, first one present wins (override with --loss-field).
EVAL_LOSS_FIELDS = ("valid_lm_loss", "lm_loss")
# Fields that, when present in a training record, must be finite (else: diverged).
FINITE_TRAIN_FIELDS = (TRAIN_LOSS, GRAD_NORM)

# ---- run metadata written by the launcher next to each run --------------------------------
RUN_META_FILE = "run_meta.json"
METRICS_FILE = "metrics.jsonl"
LAUNCH_SCRIPT = "launch.sh"
META_SCHEMA_VERSION = 1
# keys of run_meta.json the collector relies on
META_NAME = "name"
META_BUDGET = "budget"
META_PLANNED_STEPS = "steps"
META_PLANNED_TOKENS = "tokens"
META_PARAMS_TOTAL = "params_total"  # incl. input embedding and untied output head
META_PARAMS_SODA = "params_soda"  # all but the input embedding (SODA's size names)
META_PARAMS_NON_EMBEDDING = "params_non_embedding"
META_METRICS = "metrics_jsonl"  # path, relative to the run directory unless absolute
META_TRAIN_FLOPS_PER_TOKEN = "train_flops_per_token"

# ---- results table (CSV) ------------------------------------------------------------------
REQUIRED_COLUMNS = ("budget", "params", "tokens", "loss")
RESULT_COLUMNS = (
    "name",
    "budget",
    "params",
    "tokens",
    "loss",
    "flops",
    "train_flops_per_token",
    "params_total",
    "params_soda",
    "params_non_embedding",
    "width",
    "layers",
    "batch_size",
    "seq_length",
    "steps",
    "final_train_loss",
    "eval_iteration",
)
