"""`python -m analysis.rank RESULTS_DIR`: the leaderboard of a search, printed and saved as CSV."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search import remote_results, results_folder
from trainables.storage import remote


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.rank", description=__doc__)
    p.add_argument("results_dir", help="a search's results folder, e.g. results/finetune, or its URI "
                   "(s3://bucket/results/finetune)")
    p.add_argument("--top", type=int, default=10, help="rows to print (the CSV has every trial)")
    args = p.parse_args(argv)
    try:
        results_dir, uri = remote_results.open_results(args.results_dir, sys.stdout, checkpoints=False)
        record = results_folder.read_record(results_dir)
        table, _ = results_folder.write_trials_csv(results_dir)
    except (results_folder.ResultsError, remote.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    board = results_folder.leaderboard(table, record)
    out = Path(results_dir) / "leaderboard.csv"
    board.to_csv(out, index=False)
    if uri:
        remote_results.push(results_dir, uri, [out.name, "trials.csv"])
    counts = ", ".join(f"{v} {k}" for k, v in table["status"].value_counts().items()) if not table.empty else "none"
    print(f"{record.name}: {len(table)} trials ({counts}); objective {record.metric} ({record.mode})")
    print(results_folder.format_board(board, record, top=args.top))
    front = results_folder.format_front(table, record)
    if front:
        print("\n" + front)
    print(f"\nleaderboard: {out}" + (f" (uploaded to {uri}/{out.name})" if uri else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
