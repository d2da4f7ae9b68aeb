"""Loss bookkeeping of the metrics records (what scaling-law fits and dashboards read)."""

import math

import torch

from megatron_soda.models.loss import (
    REPORT_CE,
    REPORT_KIND_CE,
    REPORT_KIND_TOKENS,
    REPORT_SIZE,
    REPORT_TOKENS,
    REPORT_Z,
)
from megatron_soda.training.metrics import losses_from_report


def test_per_kind_and_speech_losses():
    vec = torch.zeros(REPORT_SIZE, dtype=torch.float64)
    # summed CE and token counts per kind: text, semantic, acoustic, markers
    ce = [10.0, 30.0, 70.0, 2.0]
    n = [5, 10, 40, 4]
    for k in range(4):
        vec[REPORT_KIND_CE + k] = ce[k]
        vec[REPORT_KIND_TOKENS + k] = n[k]
    vec[REPORT_CE], vec[REPORT_TOKENS], vec[REPORT_Z] = sum(ce), sum(n), 59.0
    out = losses_from_report(vec, z_loss_weight=1e-4)
    assert math.isclose(out["lm_loss"], 112 / 59)
    assert math.isclose(out["loss"], 112 / 59 + 1e-4)
    assert math.isclose(out["loss_semantic"], 3.0) and math.isclose(out["loss_acoustic"], 1.75)
    assert math.isclose(out["loss_audio"], 100 / 50)  # token-weighted, not the mean of the two
    assert (
        out["tokens_text"],
        out["tokens_semantic"],
        out["tokens_acoustic"],
        out["tokens_markers"],
    ) == (5, 10, 40, 4)


def test_text_only_data_has_no_speech_loss():
    vec = torch.zeros(REPORT_SIZE, dtype=torch.float64)
    vec[REPORT_KIND_CE], vec[REPORT_KIND_TOKENS], vec[REPORT_CE], vec[REPORT_TOKENS] = (
        4.0,
        2,
        4.0,
        2,
    )
    out = losses_from_report(vec, 0.0)
    assert out["loss_audio"] is None and out["loss_semantic"] is None and out["loss_text"] == 2.0
