"""`python -m analysis.rank RESULTS_DIR`: the leaderboard of a search, printed and saved as CSV."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search import results_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.rank", description=__doc__)
    p.add_argument("results_dir", help="a search's results folder, e.g. results/finetune")
    p.add_argument("--top", type=int, default=10, help="rows to print (the CSV has every trial)")
    args = p.parse_args(argv)
    try:
        info = results_folder.read_search_info(args.results_dir)
        table, _ = results_folder.write_trials_csv(args.results_dir)
    except results_folder.ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    board = results_folder.leaderboard(table, info)
    out = Path(args.results_dir) / "leaderboard.csv"
    board.to_csv(out, index=False)
    counts = ", ".join(f"{v} {k}" for k, v in table["status"].value_counts().items()) if not table.empty else "none"
    print(f"{info['name']}: {len(table)} trials ({counts}); objective {info['metric']} ({info['mode']})")
    print(results_folder.format_board(board, info, top=args.top))
    front = results_folder.format_front(table, info)
    if front:
        print("\n" + front)
    print(f"\nleaderboard: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
