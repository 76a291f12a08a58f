"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: a preset, a size, a file. The message names the problem."""


class RunError(RuntimeError):
    """A run that failed for a reason outside the user's input (a full disk): one line, exit code 1."""
