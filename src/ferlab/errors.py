"""The one exception type for user errors: the CLI (and run_script, for scripts/ and benchmarks/) prints
its message on one line, no traceback."""

import sys
from pathlib import Path


class FerlabError(Exception):
    """Bad input from the user (a missing file, a malformed row, an unknown name).

    The message names the file (and row) and the problem, in one line.
    """


def run_script(main) -> int:
    """Run a script's main() as the CLI runs a command: a FerlabError is one line on stderr, exit status 2."""
    try:
        return int(main() or 0)
    except FerlabError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
