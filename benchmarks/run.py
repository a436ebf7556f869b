"""Run every benchmark and print one table (markdown) for docs/performance.md.

    make bench                      # all, default sizes (about 22 minutes)
    make bench ARGS=--quick         # a smoke run (about 4 minutes)
"""
from __future__ import annotations

import argparse

from benchmarks import (bench_content, bench_fleet, bench_handset, bench_ingest, bench_load,
                        bench_tap, bench_views)
from benchmarks.common import save, table, warnings_only


def main() -> None:
    parser = argparse.ArgumentParser(description="Run all Tapcast benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke check)")
    args = parser.parse_args()
    warnings_only()
    quick = args.quick
    results = bench_tap.main(["--taps", "40", "--blocks", "2"] if quick else [])
    results += bench_load.main(["--duration", "10", "--floor-taps", "30"] if quick else [])
    results += bench_ingest.main(["--quick"] if quick else [])
    results += bench_fleet.main(["--quick"] if quick else [])
    results += bench_views.main(["--quick"] if quick else [])
    results += bench_content.main(["--quick"] if quick else [])
    results += bench_handset.main(["--quick"] if quick else [])
    path = save(results, "latest")
    print(table(results))
    print(f"\n(raw results: {path})")


if __name__ == "__main__":
    main()
