"""The one exception type for user errors: the CLI prints its message on one line, no traceback."""


class FerlabError(Exception):
    """Bad input from the user (a missing file, a malformed row, an unknown name).

    The message names the file (and row) and the problem, in one line.
    """
