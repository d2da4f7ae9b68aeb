"""``Trainer(config).train()``: set up megatron-core from a :class:`TrainConfig`, then the loop.

Set-up (``with Trainer(config) as trainer``) loads the tokenizer, derives what the run computes
(:mod:`megatron_soda.config.derived`), starts the distributed runtime, checks the shards, builds
model, optimizer and scheduler, resumes from a checkpoint and opens the data.  :meth:`train` is
the loop: fetch, step (:mod:`megatron_soda.training.step`), log, evaluate, checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from megatron_soda.config import TrainConfig
from megatron_soda.config.derived import derive, run_record
from megatron_soda.models.loss import REPORT_SIZE
from megatron_soda.training.metrics import Progress, losses_from_report
from megatron_soda.training.run_inputs import check_data, load_tokenizer
from megatron_soda.training.stop import StopConditions, die_with_launcher
from megatron_soda.training.task_eval import TaskEvaluator


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        """Everything that can fail without a process group: a config error stops every rank
        here, before any collective."""
        self.config = config.validate()  # idempotent: a config built in Python is normalised too
        self.tokenizer = load_tokenizer(config)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.derived = derive(config, self.tokenizer.vocab_size, self.tokenizer.layout.num_codebooks, world_size)
        self.record = run_record(config, self.derived)
        self.task_eval = TaskEvaluator.from_config(config, self.tokenizer, self.derived.architecture.seq_length)
        ckpt = config.checkpoint  # the wall clock of --exit-duration-in-mins starts here
        self.stop = StopConditions(ckpt.exit_signal if ckpt.exit_signal_handler else None, ckpt.exit_duration_in_mins)
        die_with_launcher(self.stop.signal_name)  # a torchrun worker stops when its agent dies
        self._exit = contextlib.ExitStack()
        self._entered = False

    def __enter__(self) -> Trainer:
        from megatron_soda.checkpointing.save_lock import save_dir_locked
        from megatron_soda.training.initialize import distributed_runtime

        self._exit.enter_context(self.stop.installed())  # --exit-signal-handler, until __exit__
        self.device = self._exit.enter_context(distributed_runtime(self.config))
        try:
            # one run per --save, held until the last save is committed (released after it)
            self._took_over = self._exit.enter_context(save_dir_locked(self.config.checkpoint.save, self.device))
            self._build()
        except BaseException:
            self._exit.close()
            raise
        self._entered = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._entered = False
        self._exit.__exit__(*exc)  # the exception reaches _finish_saves

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """Train to ``--train-iters`` (or ``--exit-interval``); sets up and tears down the
        distributed runtime itself when not used inside ``with Trainer(config)``."""
        if not self._entered:
            with self:
                self.train()
            return
        from megatron.core.num_microbatches_calculator import (
            get_current_global_batch_size,
            get_num_microbatches,
            update_num_microbatches,
        )

        from megatron_soda.training.faults import crash_now
        from megatron_soda.training.step import evaluate, train_step

        cfg, state, log = self.config, self.state, self.logger
        ckpt, iters = cfg.checkpoint, cfg.optim.train_iters
        window, self.progress = _Window(), Progress(state.iteration, iters, self.device)
        while state.iteration < iters:
            start = time.perf_counter()
            update_num_microbatches(state.consumed_samples, consistency_check=True)
            batch_size = get_current_global_batch_size()
            batches = self._train_batches(get_num_microbatches())
            result = train_step(self.step, self.optimizer, self.scheduler, batches, cfg.optim.on_nonfinite_loss,
                                lambda: f"iteration {state.iteration + 1} (consumed samples {state.consumed_samples})")
            state.iteration += 1
            state.consumed_samples += batch_size
            if not result.updated:
                state.skipped_iterations += 1
                log.print(f"iteration {state.iteration}: non-finite loss, update skipped")
            if self.device.type == "cuda" and state.iteration % cfg.logging.log_interval == 0:
                torch.cuda.synchronize()
            window.add(result, batch_size * self.step.seq_length, time.perf_counter() - start)
            self.saves.poll()  # commit an --async-save whose writes have all finished

            if state.iteration % cfg.logging.log_interval == 0:
                log.log(self._train_record(window))
                window = _Window()
            if self.has_validation and (state.iteration % ckpt.eval_interval == 0 or state.iteration == iters):
                log.log(self._eval_record(evaluate(self.step, self._valid_batches())))
            if self.task_eval and self.task_eval.due(state.iteration, iters):  # --eval-tasks
                log.log(self.task_eval.evaluate(self.step, self.device, state))
            if ckpt.save and ckpt.save_interval and state.iteration % ckpt.save_interval == 0:
                self.save()
            if ckpt.inject_crash_at_iteration == state.iteration:
                crash_now(f"--inject-crash-at-iteration {state.iteration}")
            if ckpt.exit_interval and state.iteration % ckpt.exit_interval == 0:
                break
            if why := self.stop.reason(self.device):  # collective: every rank stops here
                log.print(f"stopping after iteration {state.iteration}: {why}"
                          f"{'' if ckpt.save else '; no --save: nothing saved'}")
                break
        if ckpt.save and self.last_saved != state.iteration:
            self.save()
        self.saves.wait()

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        from megatron.core import parallel_state

        from megatron_soda.checkpointing import TrainState
        from megatron_soda.checkpointing.async_save import AsyncSaves
        from megatron_soda.checkpointing.verify import has_checkpoints
        from megatron_soda.scaling.flops import run_flop_counts
        from megatron_soda.training import data, model_setup
        from megatron_soda.training.metrics import MetricsLogger, peak_tflops
        from megatron_soda.training.optimizer import build_optimizer, build_scheduler
        from megatron_soda.training.step import StepContext

        cfg, arch, ckpt = self.config, self.derived.architecture, self.config.checkpoint
        self.logger = MetricsLogger(cfg, self.record)
        self._exit.callback(self.logger.close)
        if self._took_over:
            held = self._took_over
            self.logger.print(f"--save {ckpt.save}: took over a stale lock ({held.get('reason')}; held by pid "
                              f"{held.get('pid')} on {held.get('host')} since {held.get('taken_at')})")
        self.data_codec = check_data(cfg, self.tokenizer)  # recorded in every checkpoint
        if self.task_eval:
            self.task_eval.start(self.data_codec, self.logger.print)
        self.lr = self.derived.lr
        self.transformer_config = model_setup.transformer_config(arch, cfg.parallel, cfg.precision)
        self.model = model_setup.build_model(cfg, arch, self.transformer_config)
        self.optimizer = build_optimizer(cfg, self.model, self.lr)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, self.lr)
        model_setup.connect_schedule_hooks(self.transformer_config, self.model, self.optimizer, cfg.parallel)

        self.state = TrainState()
        # A checkpoint of this run's own (--save) wins over --load: a requeued fine-tune resumes
        # where it stopped instead of restarting from the weights it started from.
        own = bool(ckpt.save) and has_checkpoints(ckpt.save)
        source = ckpt.save if own else ckpt.load
        if source:
            loaded = self._resume(source, finetune=ckpt.finetune and not own)
            if loaded is None:
                self.logger.print(f"no checkpoint in {source} yet: starting from scratch")
            self.state = loaded or self.state
        self.last_saved = self.state.iteration if source else None
        self.saves = AsyncSaves()
        self._exit.push(self._finish_saves)

        optim, seq = cfg.optim, arch.seq_length
        self.train_ds, self.valid_ds = data.build_datasets(
            cfg.data, optim.seed, self.tokenizer, seq, optim.train_iters * optim.global_batch_size,
            ckpt.eval_iters * optim.global_batch_size, sft=cfg.sft.sft)
        self.has_validation = self.valid_ds is not None and ckpt.eval_iters > 0
        self._train_iter = data.data_loader(self.train_ds, self.state.consumed_samples, optim.micro_batch_size,
                                            cfg.data.num_workers)
        self.step = StepContext(self.model, self.tokenizer.layout, cfg.model.z_loss_weight, seq,
                                optim.micro_batch_size)
        # TFLOP/s and MFU use the true count (actual head dim); the paper's (Levanter's) count,
        # SODA's compute axis, goes once into the metrics as a split="run" record.
        flop_counts = run_flop_counts(arch)
        self.flops_per_token = flop_counts["train_flops_per_token"]
        self.logger.header(flop_counts)
        self.peak = peak_tflops(cfg)
        if warning := model_setup.attention_fallback_warning(self.device.type, cfg.precision.transformer_impl,
                                                             attention_backend=cfg.precision.attention_backend):
            self.logger.print(warning)
        p = cfg.parallel
        self.logger.print(f"SODA {cfg.model.model_size}: {arch.to_dict()} | lr {self.lr:.3e} | "
                          f"{cfg.precision.transformer_impl} spec | attention {cfg.precision.attention_backend} | "
                          f"world {torch.distributed.get_world_size()} "
                          f"(TP {p.tensor_model_parallel_size}, PP {p.pipeline_model_parallel_size}, "
                          f"CP {p.context_parallel_size}, DP {parallel_state.get_data_parallel_world_size()}) | "
                          f"from iteration {self.state.iteration}")

    def _resume(self, source: str, finetune: bool):
        """Load the checkpoint chosen in ``source`` (verified first; ``--load-fallback``); any
        failure while loading it is a :class:`CheckpointError` naming that checkpoint."""
        from megatron_soda.checkpointing import CheckpointError, load_checkpoint
        from megatron_soda.checkpointing.verify import agreed_checkpoint
        from megatron_soda.safe_loading import UnsafeContentError

        ckpt = self.config.checkpoint
        chosen = agreed_checkpoint(source, fallback=ckpt.load_fallback, log=self.logger.print)
        if chosen is None:
            return None
        if not finetune:
            from megatron_soda.training.sft_data import check_sft_resume

            check_sft_resume(chosen, self.config.sft.sft, self.config.sft.sft_prompt_loss)
        try:
            return load_checkpoint(chosen, self.model, self.optimizer, self.scheduler,
                                   model_cfg=self.derived.architecture, tokenizer=self.tokenizer,
                                   load_optimizer=not ckpt.no_load_optim, load_rng=not ckpt.no_load_rng,
                                   finetune=finetune, log=self.logger.print, data=self.data_codec)
        except (CheckpointError, UnsafeContentError):
            raise
        except Exception as e:  # noqa: BLE001 - named, then raised as the one-line error
            error = CheckpointError(f"{chosen}: cannot load this checkpoint ({type(e).__name__}: {e})")
            if torch.distributed.get_rank() != 0:  # main prints rank 0's errors only
                print(f"rank {torch.distributed.get_rank()}: {error}", file=sys.stderr, flush=True)
            raise error from e

    # ------------------------------------------------------------------ batches and records
    def _batch(self, raw: dict):
        from megatron_soda.training.data import make_batch

        d = self.config.data
        return make_batch(raw, self.tokenizer.eod, self.device, reset_attention_mask=d.reset_attention_mask,
                          reset_position_ids=d.reset_position_ids, eod_mask_loss=d.eod_mask_loss,
                          packed=self.config.precision.use_te, prompt_loss=self.config.sft.sft_prompt_loss,
                          attention=self.config.precision.attention_backend)

    def _train_batches(self, n: int) -> list:
        from megatron_soda.training.data_checks import DataError

        try:
            return [self._batch(next(self._train_iter)) for _ in range(n)]
        except StopIteration:
            raise DataError(f"training data exhausted at consumed samples {self.state.consumed_samples}") from None

    def _valid_batches(self) -> Iterator[list]:
        """The same first --eval-iters global batches of the held-out data at every evaluation,
        so that evaluation losses are comparable along the run (and across resumes); one
        global batch on the device at a time."""
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        from megatron_soda.training.data import data_loader
        from megatron_soda.training.data_checks import DataError

        eval_iters = self.config.checkpoint.eval_iters
        it = data_loader(self.valid_ds, 0, self.config.optim.micro_batch_size, 0)
        n = get_num_microbatches()
        for i in range(eval_iters):
            try:
                raw = [next(it) for _ in range(n)]
            except StopIteration:
                raise DataError(f"held-out data exhausted at evaluation batch {i + 1} of "
                                f"--eval-iters {eval_iters}") from None
            yield [self._batch(r) for r in raw]

    def _train_record(self, window: _Window) -> dict[str, Any]:
        tokens_per_sec = window.tokens / window.seconds if window.seconds else 0.0
        tflops = tokens_per_sec * self.flops_per_token / torch.distributed.get_world_size() / 1e12
        return {
            "split": "train", "iteration": self.state.iteration, "consumed_samples": self.state.consumed_samples,
            **losses_from_report(window.report, self.config.model.z_loss_weight, self.config.sft.sft),
            "lr": window.lr,
            "grad_norm": window.grad_norm, "tokens_per_sec": tokens_per_sec, "tflops_per_device": tflops,
            "mfu": tflops / self.peak if self.peak else None, "step_time_s": window.seconds / max(window.steps, 1),
            "skipped_iterations": self.state.skipped_iterations, **self.progress.fields(self.state.iteration),
        }

    def _eval_record(self, report: torch.Tensor) -> dict[str, Any]:
        return {"split": "valid", "iteration": self.state.iteration, "consumed_samples": self.state.consumed_samples,
                **losses_from_report(report, self.config.model.z_loss_weight, self.config.sft.sft)}

    def save(self) -> None:
        from megatron_soda.checkpointing import save_checkpoint
        from megatron_soda.training.faults import crash_now

        ckpt, iteration = self.config.checkpoint, self.state.iteration
        crash = None
        if ckpt.inject_crash_in_save == iteration:
            def crash() -> None:
                crash_now(f"--inject-crash-in-save {iteration}: data {'being ' if ckpt.async_save else ''}"
                          "written, not committed")
        path = save_checkpoint(ckpt.save, self.state, self.model, self.optimizer, self.scheduler,
                               model_cfg=self.derived.architecture, tokenizer=self.tokenizer, run_args=self.record,
                               save_optimizer=not ckpt.no_save_optim, crash_hook=crash, data=self.data_codec,
                               async_saves=self.saves if ckpt.async_save else None, on_commit=self._committed)
        self.last_saved = iteration
        if ckpt.async_save:
            self.logger.print(f"saving {path} in the background")

    def _committed(self, path: str) -> None:
        """After a checkpoint's commit (all ranks): log it, then apply --keep-last-k (rank 0)."""
        from megatron_soda.checkpointing.retention import apply_retention

        ckpt = self.config.checkpoint
        self.logger.print(f"saved {path}")
        if ckpt.keep_last_k and torch.distributed.get_rank() == 0:
            deleted = apply_retention(ckpt.save, keep_last_k=ckpt.keep_last_k, keep_every_iters=ckpt.keep_every_iters)
            if deleted:
                self.logger.print(f"deleted checkpoints of iterations {deleted} (--keep-last-k {ckpt.keep_last_k}"
                                  f"{f', --keep-every-iters {ckpt.keep_every_iters}' if ckpt.keep_every_iters else ''})")

    def _finish_saves(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        """Leaving the run with an --async-save in flight: commit it, unless the run ends on an
        error that one rank may raise alone (finalizing is collective and would hang); that
        checkpoint then stays unpublished (``.tmp``) and the previous one is what a restart loads."""
        from megatron_soda.checkpointing import CheckpointError
        from megatron_soda.training.data_checks import DataError
        from megatron_soda.training.step import NonFiniteLossError

        if self.saves.in_flight is None:
            return
        if exc_type is None or issubclass(exc_type, (CheckpointError, DataError, NonFiniteLossError)):
            self.saves.wait()  # these errors are raised at the same point on every rank
        else:
            self.logger.print(f"checkpoint of iteration {self.saves.in_flight} left unpublished: "
                              f"{exc_type.__name__} while it was being written")


class _Window:
    """Sums over the steps between two log lines."""

    def __init__(self) -> None:
        self.report = torch.zeros(REPORT_SIZE, dtype=torch.float64)
        self.steps = 0
        self.tokens = 0
        self.seconds = 0.0
        self.grad_norm: float | None = None
        self.lr: float | None = None

    def add(self, result, tokens: int, seconds: float) -> None:
        if result.updated:
            self.report += result.report
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds
        self.grad_norm = result.grad_norm
        self.lr = result.lr
