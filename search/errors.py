"""The one error type for a problem in what the user gave: `UserError`.

Every check that runs before Ray starts (search/preflight.py) raises it, or a subclass where a
caller must tell the cases apart (`search.space.SpaceError`: the space file). `search.run.main`
prints it as one line, `error: ...`, and exits with `EXIT_BAD_INPUT`; a user never sees a
traceback for a problem in their data, space or command line.
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2


class UserError(ValueError):
    """A problem in the user's input; str() is the one line shown."""
