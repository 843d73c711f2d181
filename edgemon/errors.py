"""Named errors of the edge daemon. The CLI turns each into a one-line message and exit code."""


class EdgemonError(Exception):
    """Base class of every error edgemon expects and reports to the user."""


class AudioError(EdgemonError):
    """An audio file cannot be read or holds no usable audio."""


class BundleError(EdgemonError):
    """A model bundle is missing, broken, or declares something this edgemon cannot run."""


class FrontendMismatchError(BundleError):
    """A model declares a feature frontend that this edgemon does not compute."""
