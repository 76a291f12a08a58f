"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: a preset, a size, a file. The message names the problem."""
