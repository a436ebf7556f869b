"""Run every benchmark and print one table (markdown) for docs/performance.md.

    make bench                      # all, default sizes
    .venv/bin/python -m benchmarks.run --quick
"""
from __future__ import annotations

import argparse
import logging

from benchmarks import bench_ingest, bench_tap
from benchmarks.common import save, table


def main() -> None:
    parser = argparse.ArgumentParser(description="Run all Tapcast benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke check)")
    args = parser.parse_args()
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)  # nfcpy sets its logger to INFO on import
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    taps = ["--taps", "30"] if args.quick else []
    events = ["--events", "20000"] if args.quick else []
    results = bench_tap.main(taps)
    results += bench_ingest.main(events + ["--batch", "5"])
    results += bench_ingest.main(events + ["--batch", "200"])
    path = save(results, "latest")
    print(table(results))
    print(f"\n(raw results: {path})")


if __name__ == "__main__":
    main()
