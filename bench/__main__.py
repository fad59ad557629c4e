"""`python -m bench --quick`: every bench script's quick mode, one after another, and a summary.

Each `bench/*.py` that takes `--quick` runs as `python bench/<script> --quick` in a process
group of its own; what is left of that group when it ends (a Ray cluster it started), or when
it runs past `--timeout`, is killed by PID. Printed: each script's last line (its figure and
goal) and time, a failed script's last lines of output, the scripts that have no quick mode,
and a summary. The exit status is 1 when any script failed (exit status not 0, or timed out).

Quick modes check that a bench works, on tiny inputs: their figures are not the benches'
figures (bench/README.md has those, from full runs). The full benches are run one at a time,
by hand: some take an hour, and one (anytime_table.py) rewrites a recorded table.

    python -m bench --quick                          # all of them (about half an hour on 2 cores)
    python -m bench --quick --only data footprint    # some of them
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def has_quick(script: Path) -> bool:
    return '"--quick"' in script.read_text()


def _descendants(pids: set[int]) -> set[int]:
    """PIDS and every process below them (Ray's workers leave their raylet's process group)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=", "-A"], capture_output=True, text=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for pid, ppid in (map(int, ln.split()) for ln in out if ln.strip()):
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of process group PGID and its descendants, by PID."""
    out = subprocess.run(["ps", "-o", "pid=,pgid=", "-A"], capture_output=True, text=True).stdout.split("\n")
    group = {int(p) for p, g in (ln.split() for ln in out if ln.strip()) if int(g) == pgid}
    for pid in _descendants(group):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(script: Path, timeout: float) -> tuple[bool, str, float]:
    """Run SCRIPT --quick; (passed, its last line or why it failed, seconds)."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, str(script), "--quick"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:g} s", time.time() - started
    finally:
        kill_group(proc.pid)
        proc.wait()
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    if proc.returncode != 0:
        tail = "\n    ".join(lines[-15:])
        return False, f"exit status {proc.returncode}; its last lines:\n    {tail}", time.time() - started
    return True, lines[-1] if lines else "(no output)", time.time() - started


def pick(names: list[str] | None) -> list[Path]:
    """The scripts NAMES ('data' or 'data.py'), all of them without NAMES; ValueError for an unknown name."""
    every = {p.stem: p for p in scripts()}
    if not names:
        return list(every.values())
    unknown = [n for n in names if n.removesuffix(".py") not in every]
    if unknown:
        raise ValueError(f"no bench/{unknown[0].removesuffix('.py')}.py; the scripts are {', '.join(every)}")
    return [every[n.removesuffix(".py")] for n in names]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="run the quick modes (required: the full benches are run "
                    "one at a time, by hand)")
    ap.add_argument("--only", nargs="+", metavar="SCRIPT", help="these scripts only (data, data.py, ...)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds each script may run (default 1200)")
    args = ap.parse_args(argv)
    if not args.quick:
        ap.error("give --quick: the full benches run one at a time, by hand (python bench/<script>.py; "
                 "some take an hour)")
    try:
        chosen = pick(args.only)
    except ValueError as e:
        ap.error(str(e))
    runnable = [s for s in chosen if has_quick(s)]
    lacking = [s.name for s in chosen if not has_quick(s)]
    failed = []
    for i, script in enumerate(runnable, 1):
        print(f"[{i}/{len(runnable)}] {script.name} --quick ...", flush=True)
        ok, line, seconds = run(script, args.timeout)
        print(f"[{i}/{len(runnable)}] {script.name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s: {line}", flush=True)
        if not ok:
            failed.append(script.name)
    print(f"{len(runnable) - len(failed)} of {len(runnable)} quick runs passed"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; no --quick: {', '.join(lacking)}" if lacking else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
