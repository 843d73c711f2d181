"""Named errors of the training side; subclasses of the edge's base so one handler serves both."""

from edgemon.errors import EdgemonError


class DataError(EdgemonError):
    """A label list or clip cannot be used for training or evaluation."""
