"""Run benchmarks several times in --quick mode (or at full size) and report the median of
every figure.

    python bench/medians.py [--runs 3] [--full] [append audit import portal projector]

Each benchmark prints one JSON object as its last line; this collects them, prints the
median of each numeric key per benchmark as one JSON object (last line) and writes it to
bench/results/medians-<UTC time>.json. Runs of different benchmarks are interleaved
(round after round), so a burst of other load on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run_once(name: str, full: bool = False) -> dict[str, object]:
    flags = [] if full else ["--quick"]
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *flags], capture_output=True, text=True,
                          cwd=BENCH.parent)
    if proc.returncode != 0:
        raise SystemExit(f"bench/{name}.py {' '.join(flags)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


def medians(results: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in results[0]:
        values = [r.get(key) for r in results]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values):
            out[key] = round(statistics.median(numbers), 4)
            out[f"{key}__runs"] = numbers
        elif all(v == values[0] for v in values):
            out[key] = values[0]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="the benchmarks' full sizes instead of --quick (minutes each)")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    names = args.names or sorted(p.stem for p in BENCH.glob("*.py")
                                 if p.stem not in ("common", "medians", "__init__") and "__main__" in p.read_text())
    unknown = [n for n in names if not (BENCH / f"{n}.py").exists()]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    collected: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    for round_no in range(1, args.runs + 1):
        for name in names:
            mode = "" if args.full else " --quick"
            print(f"== round {round_no}/{args.runs}: bench/{name}.py{mode}", file=sys.stderr, flush=True)
            collected[name].append(run_once(name, args.full))
    summary = {"runs": args.runs, "full": args.full, **{n: medians(r) for n, r in collected.items()}}
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"medians-{stamp}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
