"""Start-up time of `jmed --help` (target: well under a second) and which heavy modules it imports.

    .venv/bin/python benchmarks/cli_startup.py [--runs 10]

Prints min / median / max wall time of `jmed --help` as a fresh process, the same for a bare
`python -c pass` (the interpreter's own floor), and the heavy modules loaded by importing jmed.cli.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "peft", "bitsandbytes", "transformers", "mlflow", "great_expectations", "pandas", "rapidfuzz")


def timed(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return times


def line(name: str, times: list[float]) -> str:
    return (
        f"{name:<22} min {min(times):6.3f} s   median {statistics.median(times):6.3f} s   "
        f"max {max(times):6.3f} s   ({len(times)} runs)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    jmed = Path(sys.executable).parent / "jmed"
    cmd = [str(jmed), "--help"] if jmed.exists() else [sys.executable, "-m", "jmed", "--help"]
    timed(cmd, 1)  # warm the file cache
    print(f"jmed --help start-up ({' '.join(Path(c).name for c in cmd)}), {os.cpu_count()} CPUs")
    print(line("python -c pass", timed([sys.executable, "-c", "pass"], args.runs)))
    print(line("jmed --help", timed(cmd, args.runs)))
    print(line("jmed validate --help", timed(cmd[:-1] + ["validate", "--help"], args.runs)))
    probe = "import sys, jmed.cli; heavy = %r; print(','.join(m for m in heavy if m in sys.modules) or 'none')" % (
        HEAVY,
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    print(f"heavy modules imported by jmed.cli: {loaded.stdout.strip()}")


if __name__ == "__main__":
    main()
