"""The training loop: fetch, step, log, evaluate, checkpoint.  Everything it calls is set up in
:mod:`megatron_soda.training.main`."""

from __future__ import annotations

import time

import torch
from megatron.core.num_microbatches_calculator import (
    get_current_global_batch_size,
    get_num_microbatches,
    update_num_microbatches,
)

from megatron_soda.models.loss import REPORT_SIZE
from megatron_soda.training.faults import crash_now
from megatron_soda.training.metrics import losses_from_report
from megatron_soda.training.step import evaluate, train_step


def train(run) -> None:
    args, state, log = run.args, run.state, run.logger
    window = _Window()
    while state.iteration < args.train_iters:
        start = time.perf_counter()
        update_num_microbatches(state.consumed_samples, consistency_check=True)
        batch_size = get_current_global_batch_size()
        batches = run.train_batches(get_num_microbatches())
        result = train_step(run.step, run.optimizer, run.scheduler, batches, args.on_nonfinite_loss,
                            lambda: f"iteration {state.iteration + 1} (consumed samples {state.consumed_samples})")
        state.iteration += 1
        state.consumed_samples += batch_size
        if not result.updated:
            state.skipped_iterations += 1
            log.print(f"iteration {state.iteration}: non-finite loss, update skipped")
        if run.device.type == "cuda" and state.iteration % args.log_interval == 0:
            torch.cuda.synchronize()
        window.add(result, batch_size * run.step.seq_length, time.perf_counter() - start)

        if state.iteration % args.log_interval == 0:
            log.log(run.train_record(window))
            window = _Window()
        if run.has_validation and (state.iteration % args.eval_interval == 0 or state.iteration == args.train_iters):
            log.log(run.eval_record(evaluate(run.step, run.valid_batches())))
        if args.save and args.save_interval and state.iteration % args.save_interval == 0:
            run.save()
        if args.inject_crash_at_iteration == state.iteration:
            crash_now(f"--inject-crash-at-iteration {state.iteration}")
        if args.exit_interval and state.iteration % args.exit_interval == 0:
            break
    if args.save and run.last_saved != state.iteration:
        run.save()


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

    def losses(self, z_loss_weight: float) -> dict:
        return losses_from_report(self.report, z_loss_weight)
