"""Exceptions with messages meant for the person at the node graph."""


class PuLIDError(ValueError):
    """Base class: every message says what is wrong and how to fix it."""


class ModelFileError(PuLIDError):
    """A model file is missing, corrupt, unsafe or of the wrong kind."""


class FaceNotFoundError(PuLIDError):
    """No usable face in a reference image."""


class UnalignableFaceError(FaceNotFoundError):
    """A detected face whose five landmarks cannot be aligned (degenerate): no usable face either."""
