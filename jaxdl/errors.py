"""Errors that mean "the user's input is wrong", as opposed to a bug.

The command line prints these as one line and exits 2; any other exception is a bug (in jaxdl or in
a user's ``get_config``) and keeps its traceback (exit 1).
"""


class UserError(Exception):
    """Base of the errors caused by what the user supplied; the message names the problem."""


class ConfigError(UserError, ValueError):
    """A config file, argument, override or value that cannot be used."""


class DataError(UserError, ValueError):
    """Data that is missing, unreadable, or does not fit the task (wrong fields, empty split)."""
