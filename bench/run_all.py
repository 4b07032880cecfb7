"""``make bench``: every benchmark in turn, each printing its figures next to its ceiling.

    .venv/bin/python bench/run_all.py

Runs in well under ten minutes on a 2-core machine; each script makes (and removes) its own
database and broker. The figures and what limits them: docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

SUITE = [
    ["ingest.py"],
    ["report_batch.py"],
    ["fanout.py"],
    # The AWS SDK device's update -> accepted round trip beside a bare-broker answer.
    ["aws_shadow.py", "--updates", "300"],
    ["http_api.py"],
    # 100k and 300k registered through the batch API (about two minutes); the 1M figures
    # (about four minutes) are in docs/benchmarks.md "Fleet scale".
    ["fleet_scale.py", "--sizes", "100000,300000"],
    ["fleet_job.py", "--devices", "100000"],
    # 10k per phase (about a minute): the full 100k figures take ~10 minutes, see
    # docs/benchmarks.md "Provisioning".
    ["provision.py", "--devices", "10000"],
    # The device edge at moderate sizes (about two minutes together); the full figures
    # (5,000-device storms, 1M registered, a 100k restart) are in docs/benchmarks.md
    # "Device edge".
    ["connect_storm.py", "--devices", "2000", "--rounds", "3"],
    ["broker_start.py", "--devices", "100000", "--connected", "2000"],
    ["broker_restart.py", "--devices", "20000", "--quiet-s", "10"],
]


def main() -> int:
    started = time.monotonic()
    failed = []
    for script, *args in SUITE:
        print(f"\n=== {script} {' '.join(args)}".rstrip(), flush=True)
        begun = time.monotonic()
        result = subprocess.run([sys.executable, str(BENCH / script), *args], check=False)
        print(f"--- {script}: {time.monotonic() - begun:.0f} s", flush=True)
        if result.returncode != 0:
            failed.append(script)
    print(f"\nbenchmarks done in {time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
