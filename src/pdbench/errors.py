"""Errors that carry a message fit for the user: which file or key, and what is wrong."""


class PdbenchError(Exception):
    """Base class for every error the command line reports without a traceback."""


class ConfigError(PdbenchError):
    """The configuration is invalid; the message names the key."""


class InputError(PdbenchError):
    """A log, trace or other input file is unusable; the message names the file."""


class StageError(PdbenchError):
    """A stage of a grid point could not do its part; the message says what it saw."""
