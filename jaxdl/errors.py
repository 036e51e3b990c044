"""Why a run ended early, each with its exit code; and "the user's input is wrong" vs a bug.

The command line prints a ``JaxdlExit`` as one line and exits with its ``exit_code``; any other
exception is a bug (in jaxdl or in a user's ``get_config``) and keeps its traceback (exit 1).

| code | meaning |
|---|---|
| 0 | finished |
| 1 | internal error (a bug): traceback |
| 2 | usage, config or data error; a changed config on resume (nothing written) |
| 3 | the workdir is locked by another live run |
| 4 | training diverged (non-finite loss or gradients); the last finite checkpoint is kept |
| 5 | no intact checkpoint to resume or evaluate from (each damaged one is named) |
| 75 | interrupted (SIGTERM / SIGINT): saved at a step boundary, re-run the command to resume |
"""


class JaxdlExit(Exception):
    """A run that ends early for a reason the user must know; the message is one line."""

    exit_code = 1
    prefix = "jaxdl: "


class UserError(JaxdlExit):
    """Base of the errors caused by what the user supplied; the message names the problem."""

    exit_code = 2
    prefix = "jaxdl: error: "


class ConfigError(UserError, ValueError):
    """A config file, argument, override or value that cannot be used."""


class DataError(UserError, ValueError):
    """Data that is missing, unreadable, or does not fit the task (wrong fields, empty split)."""


class WorkdirLockedError(UserError):
    """Another live run holds the workdir's lock."""

    exit_code = 3


class DivergedError(JaxdlExit):
    """The loss or gradients became non-finite; the last finite checkpoint was kept."""

    exit_code = 4


class InterruptedRun(JaxdlExit):
    """SIGTERM or SIGINT arrived; the run saved at a step boundary and can be resumed."""

    exit_code = 75


class NoGoodCheckpointError(JaxdlExit):
    """Every checkpoint in a directory is damaged (unreadable or failing its checksums)."""

    exit_code = 5
