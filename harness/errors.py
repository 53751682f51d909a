"""Errors a user can act on: each names the problem and the fix."""


class KconformError(Exception):
    """Bad input or a missing prerequisite; the message says what to do."""


class KernelUnavailable(KconformError):
    """A kernel could not be resolved, fetched or unpacked."""
