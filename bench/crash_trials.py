"""Crash trials per minute: the kill -9 harness of ``services/executor/crash_trials.py``, timed.

Each trial forks a process that runs the executor's plan path against the exchange simulator (its own process)
over HTTP, SIGKILLs it at a seeded crash point or after a seeded random delay, restarts (boot recovery + the
bus redelivery), and verifies the books.  The figure includes everything: fork, ccxt client, journal fsyncs,
the settle waits a crash before a send requires, recovery and verification.
Last printed line: one JSON object, e.g. {"crash_trials_per_min": 110.4, ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.executor.crash_trials import run_parallel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (the CI test uses 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aura-bench-crash-") as tmp:
        summary = run_parallel(args.trials, args.seed, Path(tmp), args.workers)
    out = {"crash_trials_per_min": summary["trials_per_min"], "trials": summary["trials"],
           "workers": args.workers, "elapsed_s": summary["elapsed_s"], "trial_s_mean": summary["trial_s_mean"],
           "sigkills": summary["killed"], "recoveries_killed": summary["recoveries_killed"],
           "orders_checked": summary["orders_checked"], "violations": len(summary["violations"])}
    print(f"{out['trials']} crash trials in {out['elapsed_s']} s with {args.workers} workers: "
          f"{out['crash_trials_per_min']} trials/min, {out['sigkills']} SIGKILLs, {out['violations']} violations")
    print(json.dumps(out))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
