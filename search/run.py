"""`python -m search.run SPACE.yaml`: validate the space, split the data once, run the search.

Everything that can be wrong with the input is checked before Ray starts (search/preflight.py),
and reported as one line on stderr with exit code 2. The results folder gets, besides Ray's own
trial folders, the resolved space, the split, a data summary and `trials.csv`. The steps, each
in its own module: search/cli.py parses, search/preflight.py checks, search/launch.py runs,
search/outcome.py prints the outcome.
"""
from __future__ import annotations

import sys
import time

from search import cli, launch, outcome, preflight
from search import space as space_mod
from search.errors import EXIT_BAD_INPUT, UserError
from trainables.data import dataset
from trainables.data.images import DataError
from trainables.storage import remote


def main(argv=None) -> int:
    started = time.time()
    request = cli.parse(argv, started)
    try:
        checked = preflight.check(request)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    outcome.print_data_summary(dataset.summary(checked.index))
    if request.dry_run:
        print("\nresolved space:\n" + space_mod.describe(checked.spec))
        return 0
    owns_ray = False
    try:
        owns_ray = launch.start_ray(request.address, request.verbose)
        launch.stop_on_sigterm()  # after ray.init, whose own SIGTERM handler would abort this process
        result = launch.run_search(checked)
        outcome.print_outcome(result)
    except (UserError, remote.StorageError, DataError) as e:  # a bucket failing mid-search, too
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except remote.StorageUnreachable as e:  # for longer than remote.OUTAGE_LIMIT_S: --resume goes on
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before Tune took over the signal, or after it returned
        print("\ninterrupted; rerun the same command to see what was kept (it says when --resume applies)",
              file=sys.stderr)
        return outcome.EXIT_INTERRUPTED
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return outcome.exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
