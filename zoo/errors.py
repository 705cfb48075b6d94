"""Errors the zoo reports to a user as one line (see ``zoo.run``)."""


class ZooError(Exception):
    """Base class: a problem the user can fix; ``zoo.run`` prints it as one line and exits non-zero."""

    exit_code = 1


class ConfigError(ZooError):
    """Unknown recipe, key or registered name, or a value of the wrong type (exit status 2)."""

    exit_code = 2


class DataError(ZooError):
    """Missing, malformed or inconsistent data (exit status 1)."""


class RequestError(ZooError, ValueError):
    """A bad request to a loaded model (empty history, unknown item ids, k out of range, a wrong type): exit 2."""

    exit_code = 2
