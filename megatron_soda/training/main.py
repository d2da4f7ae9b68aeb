"""``pretrain_soda.py``: parse flags, set up the run, train.

Errors a user can fix (bad shards, an incompatible checkpoint, a non-finite loss, a flag that
needs a missing package) end the run with one ``error:`` line from rank 0 and exit code 1,
raised at the same point on every rank so that no rank waits forever in a collective.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from megatron_soda.compat import CpuCompatError
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError
from megatron_soda.training.data_checks import DataError, check_prefix, check_split
from megatron_soda.training.errors import ConfigError
from megatron_soda.training.flags import parse_args
from megatron_soda.training.flags.model import model_config
from megatron_soda.training.flags.parallel import resolve_virtual_stages


class Run:
    """Everything the training loop touches."""

    def __init__(self, args: argparse.Namespace, tokenizer: SodaTokenizer, model_cfg, device: torch.device) -> None:
        from megatron.core import parallel_state

        from megatron_soda.checkpointing import TrainState, find_checkpoint, load_checkpoint
        from megatron_soda.models import paper_learning_rate
        from megatron_soda.training import data, model_setup
        from megatron_soda.training.metrics import MetricsLogger, peak_tflops
        from megatron_soda.training.step import StepContext

        self.args, self.tokenizer, self.model_cfg, self.device = args, tokenizer, model_cfg, device
        self.logger = MetricsLogger(args, vars(args))
        _check_data(args, tokenizer)
        self.lr = args.lr if args.lr is not None else paper_learning_rate(args.global_batch_size, model_cfg.hidden_size)
        self.config = model_setup.transformer_config(args, model_cfg)
        self.model = model_setup.build_model(args, model_cfg, self.config)
        self.optimizer = model_setup.build_optimizer(args, self.model, self.lr)
        self.scheduler = model_setup.build_scheduler(args, self.optimizer, self.lr)
        model_setup.connect_schedule_hooks(self.config, self.model, self.optimizer, args)

        self.state = TrainState()
        # A checkpoint of this run's own (--save) wins over --load: a requeued fine-tune resumes
        # where it stopped instead of restarting from the weights it started from.
        own = args.save and os.path.isdir(args.save) and find_checkpoint(args.save)
        source = args.save if own else args.load
        if source:
            finetune = args.finetune and not own
            loaded = load_checkpoint(source, self.model, self.optimizer, self.scheduler, model_cfg=model_cfg,
                                     tokenizer=tokenizer, load_optimizer=not args.no_load_optim,
                                     load_rng=not args.no_load_rng, finetune=finetune, log=self.logger.print)
            if loaded is None:
                self.logger.print(f"no checkpoint in {source} yet: starting from scratch")
            self.state = loaded or self.state
        self.last_saved = self.state.iteration if source else None

        seq = model_cfg.seq_length
        gbs = args.global_batch_size
        self.train_ds, self.valid_ds = data.build_datasets(args, tokenizer, seq, args.train_iters * gbs, args.eval_iters * gbs)
        self.has_validation = self.valid_ds is not None and args.eval_iters > 0
        self._train_iter = data.data_loader(self.train_ds, self.state.consumed_samples, args.micro_batch_size,
                                            args.num_workers)
        self.step = StepContext(self.model, tokenizer.layout, args.z_loss_weight, seq, args.micro_batch_size)
        self.flops_per_token = _training_flops_per_token(model_cfg)
        self.peak = peak_tflops(args)
        self.logger.print(f"SODA {args.model_size}: {model_cfg.to_dict()} | lr {self.lr:.3e} | "
                          f"{args.transformer_impl} spec | world {torch.distributed.get_world_size()} "
                          f"(TP {args.tensor_model_parallel_size}, PP {args.pipeline_model_parallel_size}, "
                          f"DP {parallel_state.get_data_parallel_world_size()}) | from iteration {self.state.iteration}")

    def _batch(self, raw: dict):
        from megatron_soda.training.data import make_batch

        a = self.args
        return make_batch(raw, self.tokenizer.eod, self.device, reset_attention_mask=a.reset_attention_mask,
                          reset_position_ids=a.reset_position_ids, eod_mask_loss=a.eod_mask_loss,
                          packed=a.transformer_impl == "transformer_engine")

    def train_batches(self, n: int) -> list:
        try:
            return [self._batch(next(self._train_iter)) for _ in range(n)]
        except StopIteration:
            raise DataError(f"training data exhausted at consumed samples {self.state.consumed_samples}") from None

    def valid_batches(self) -> Iterator[list]:
        """The same first --eval-iters global batches of the held-out data at every evaluation,
        so that evaluation losses are comparable along the run (and across resumes); one
        global batch on the device at a time."""
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        from megatron_soda.training.data import data_loader

        it = data_loader(self.valid_ds, 0, self.args.micro_batch_size, 0)
        n = get_num_microbatches()
        for i in range(self.args.eval_iters):
            try:
                raw = [next(it) for _ in range(n)]
            except StopIteration:
                raise DataError(f"held-out data exhausted at evaluation batch {i + 1} of "
                                f"--eval-iters {self.args.eval_iters}") from None
            yield [self._batch(r) for r in raw]

    def train_record(self, window) -> dict[str, Any]:
        tokens_per_sec = window.tokens / window.seconds if window.seconds else 0.0
        tflops = tokens_per_sec * self.flops_per_token / torch.distributed.get_world_size() / 1e12
        return {
            "split": "train", "iteration": self.state.iteration, "consumed_samples": self.state.consumed_samples,
            **window.losses(self.args.z_loss_weight),
            "lr": window.lr,
            "grad_norm": window.grad_norm, "tokens_per_sec": tokens_per_sec, "tflops_per_device": tflops,
            "mfu": tflops / self.peak if self.peak else None, "step_time_s": window.seconds / max(window.steps, 1),
            "skipped_iterations": self.state.skipped_iterations,
        }

    def eval_record(self, report) -> dict[str, Any]:
        from megatron_soda.training.metrics import losses_from_report

        return {"split": "valid", "iteration": self.state.iteration, "consumed_samples": self.state.consumed_samples,
                **losses_from_report(report, self.args.z_loss_weight)}

    def save(self) -> None:
        from megatron_soda.checkpointing import save_checkpoint
        from megatron_soda.training.faults import crash_now

        crash = None
        if self.args.inject_crash_in_save == self.state.iteration:
            def crash() -> None:
                crash_now(f"--inject-crash-in-save {self.state.iteration}: data written, not committed")
        path = save_checkpoint(self.args.save, self.state, self.model, self.optimizer, self.scheduler,
                               model_cfg=self.model_cfg, tokenizer=self.tokenizer, run_args=vars(self.args),
                               save_optimizer=not self.args.no_save_optim, crash_hook=crash)
        self.last_saved = self.state.iteration
        self.logger.print(f"saved {path}")


def _training_flops_per_token(model_cfg) -> float:
    from megatron_soda.scaling.flops import training_flops_per_token

    return training_flops_per_token(model_cfg.shape())


def _check_data(args: argparse.Namespace, tokenizer: SodaTokenizer) -> None:
    """Shard checks on rank 0; the verdict is broadcast so that every rank stops together."""
    from megatron_soda.training.data import all_prefixes, blends

    verdict: list[str | None] = [None]
    if torch.distributed.get_rank() == 0:
        try:
            b = blends(args)
            split_prefixes = set(b["blend"][0]) if "blend" in b else set()  # --split divides these
            for prefix in all_prefixes(args):
                summary = check_prefix(prefix, tokenizer, args.data_check, args.data_check_max_gib)
                if prefix in split_prefixes and summary:
                    check_split(prefix, summary["sequences"], args.split)
        except (ValueError, OSError) as e:
            verdict[0] = str(e)
    torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise DataError(verdict[0])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        tokenizer = SodaTokenizer.load(args.tokenizer, num_codebooks=args.num_codebooks)
        model_cfg = model_config(args, tokenizer.vocab_size)
        resolve_virtual_stages(args, model_cfg.num_layers)
        model_cfg.check_tensor_parallel(args.tensor_model_parallel_size)
    except (TokenizerError, ValueError) as e:  # before any process group: config problems only
        _fail(e, rank0)
    from megatron_soda.checkpointing import CheckpointError
    from megatron_soda.training.initialize import distributed_runtime
    from megatron_soda.training.step import NonFiniteLossError

    try:
        with distributed_runtime(args) as device:
            run = Run(args, tokenizer, model_cfg, device)
            try:
                from megatron_soda.training.loop import train

                train(run)
            finally:
                run.logger.close()
    except (TokenizerError, DataError, ConfigError, CheckpointError, NonFiniteLossError, CpuCompatError) as e:
        _fail(e, rank0)


def _fail(error: BaseException, rank0: bool) -> None:
    if rank0:
        print(f"pretrain_soda.py: error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)
