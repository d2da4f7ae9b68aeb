"""The processes of :func:`megatron_soda.convert.from_hf.convert_from_hf`.

``python -m megatron_soda.convert.worker PLAN.json`` imports torch and megatron once, then forks
one process per rank (TP x PP), which is much faster than starting TP x PP interpreters.  The
fork happens before any tensor work, so no thread pool is inherited.  Each rank writes its
output to ``rankN.log`` next to the plan; the launcher exits non-zero if any rank fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import torch


def run(plan: dict, rank: int) -> None:
    from safetensors.torch import load_file

    from megatron_soda.checkpointing import TrainState, save_checkpoint
    from megatron_soda.convert.hf_weights import HFWeights
    from megatron_soda.convert.runtime import build_stage, fill_stage, megatron_runtime
    from megatron_soda.models.config import SodaModelConfig
    from megatron_soda.tokenizer import SodaTokenizer

    cfg = SodaModelConfig.from_dict(plan["cfg"])
    tok = SodaTokenizer.from_pretrained(plan["tokenizer_dir"])
    extension = load_file(plan["extension"]) if plan["extension"] else None
    with megatron_runtime(rank, plan["world"], plan["store"], plan["tp"], plan["pp"]):
        chunk = build_stage(cfg, torch.float32)
        weights = HFWeights(
            plan["hf_dir"], cfg, tied=plan["tied"], copy_rows=plan["copy_rows"], extension=extension
        )
        fill_stage(chunk, weights.megatron_tensor)
        del weights
        save_checkpoint(
            plan["save"],
            TrainState(),
            [chunk],
            None,
            None,
            model_cfg=cfg,
            tokenizer=tok,
            run_args=plan["run_args"],
            save_optimizer=False,
        )


def _child(plan: dict, rank: int, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 0
    try:
        torch.set_num_threads(plan["threads"])
        run(plan, rank)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch(plan_path: str) -> int:
    import megatron.core.dist_checkpointing  # noqa: F401  (imported once, before forking)

    import megatron_soda.checkpointing.io  # noqa: F401
    import megatron_soda.convert.runtime  # noqa: F401
    import megatron_soda.models.gpt  # noqa: F401

    with open(plan_path) as f:
        plan = json.load(f)
    work = os.path.dirname(plan_path)
    pids = {}
    for rank in range(plan["world"]):
        pid = os.fork()
        if pid == 0:
            _child(plan, rank, os.path.join(work, f"rank{rank}.log"))
        pids[pid] = rank
    failed = None
    while pids:
        pid, status = os.wait()
        rank = pids.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0 and failed is None:
            failed = rank
            for other in pids:  # the others would wait forever in a collective
                os.kill(other, signal.SIGTERM)
    if failed is not None:
        print(
            f"rank {failed} failed; see {os.path.join(work, f'rank{failed}.log')}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1]))
