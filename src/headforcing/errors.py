"""The exceptions the CLI turns into one line and an exit code (2: the user's input; 1: the run), and the
check of a whole number that every reader of an edited file shares."""


class UsageError(ValueError):
    """Bad input from the user: a preset, a size, a file. The message names the problem."""


def whole(value, low: int = 0) -> bool:
    """A JSON value that is an integer >= low (not a bool): for checking files a user may have edited."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


class RunError(RuntimeError):
    """A run that failed for a reason outside the user's input (a full disk): one line, exit code 1."""
