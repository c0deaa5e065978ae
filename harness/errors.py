from __future__ import annotations

"""Errors that reach the user as one line, never as a traceback."""


class QuantgateError(Exception):
    """Base class: the message is what the user reads."""


class PlanError(QuantgateError):
    """A plan (or a policy file it references) is invalid."""


class DataError(QuantgateError):
    """Embedded data could not be fetched or verified."""


class MissingDependency(QuantgateError):
    """An adapter's library is not installed."""

    # A plain message (no custom __init__ args) so that it pickles across worker processes.
    @classmethod
    def of(cls, what: str, package: str, extra: str) -> MissingDependency:
        return cls(f"{what} needs the Python package '{package}', which is not installed; "
                   f"install it with: pip install 'quantgate[{extra}]'")


class SessionRefused(QuantgateError):
    """A session cannot give what a suite asks (a server's log-probs failed their self-check,
    full distributions from a server): that suite is an error of the record, the others run."""
