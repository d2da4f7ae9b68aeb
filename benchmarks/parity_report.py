"""Loss differences measured by the training parity tests, as a table.

The torchrun tests (tests/test_train_torchrun.py) assert that every layout stays within their
tolerance of the one-process run; this prints how close they actually came, from the metrics
files those tests leave behind:

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_train_torchrun.py --basetemp=/tmp/parity
    .venv/bin/python benchmarks/parity_report.py /tmp/parity
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

# (run, reference run, what it checks); iterations compared: those both files hold
COMPARISONS = (
    ("tp2", "baseline", "TP=2 vs 1 process"),
    ("tp2_sp", "baseline", "TP=2 + sequence parallel vs 1 process"),
    ("pp2", "baseline", "PP=2 vs 1 process"),
    ("pp2_vpp2", "baseline", "PP=2 x 2 virtual stages vs 1 process"),
    ("dp2", "baseline", "DP=2 + distributed optimizer vs 1 process"),
    ("killed_resumed", "baseline", "1 process killed, resumed vs never stopped"),
    ("dp2_resumed", "dp2", "DP=2 crashed while saving, resumed vs never stopped"),
    ("tp2_to_tp1", "tp2", "TP=2 checkpoint resumed at TP=1 vs TP=2 throughout"),
    ("tp2_to_pp2", "tp2", "TP=2 checkpoint resumed at PP=2 vs TP=2 throughout"),
)


def train_losses(path: str) -> dict[int, float]:
    out = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("split") == "train":
                out[record["iteration"]] = record["lm_loss"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("basetemp", help="the --basetemp given to pytest")
    a = ap.parse_args(argv)
    found = sorted(glob.glob(os.path.join(a.basetemp, "train*", "baseline.jsonl")))
    if not found:
        print(f"parity_report: no train*/baseline.jsonl under {a.basetemp}", file=sys.stderr)
        return 1
    work = os.path.dirname(found[0])
    print("| comparison | iterations | max abs loss difference |\n|---|---|---|")
    for run, ref, what in COMPARISONS:
        got, want = train_losses(os.path.join(work, run + ".jsonl")), train_losses(os.path.join(work, ref + ".jsonl"))
        common = sorted(set(got) & set(want))
        diff = max(abs(got[i] - want[i]) for i in common)
        print(f"| {what} | {common[0]}-{common[-1]} | {diff:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
