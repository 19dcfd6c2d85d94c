"""Errors shared by the whole library."""


class OptionError(ValueError):
    """Arguments that do not go together: a usage error at the command line (one line,
    naming the parameters as the Python API spells them)."""
