"""Run every benchmark script, in quick or full mode, and summarize their figures and checks.

Each script runs in its own process (one after the other, so they do not compete for the CPUs),
its output streamed as it comes; the figures are collected from their ``--json`` files. Exit code
1 when any script fails one of its checks (or crashes).

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPTS = ("harness_overhead", "sampler_cost", "coco_eval", "memory", "fixed_cost", "input_prep",
           "latency_store", "fingerprint_cost", "runtimes")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized runs")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these")
    parser.add_argument("--json", metavar="FILE", help="write every script's figures to FILE")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="detbench-bench-") as tmp:
        for name in args.only or SCRIPTS:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
            cmd += ["--quick"] if args.quick else []
            start = time.perf_counter()
            code = subprocess.call(cmd)
            elapsed = time.perf_counter() - start
            result = json.loads(out.read_text()) if out.is_file() else {
                "status": "CRASHED", "figures": {}, "failed": [f"exit code {code}"]}
            result["seconds"] = round(elapsed, 1)
            results[name] = result
            print(flush=True)
    print("== summary" + (" (quick)" if args.quick else ""))
    for name, result in results.items():
        failed = ", ".join(str(f) for f in result.get("failed") or [])
        print(f"{name:18s} {result['status']:7s} {result['seconds']:7.1f} s"
              f"{'  failed: ' + failed if failed else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(r["status"] == "PASS" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
