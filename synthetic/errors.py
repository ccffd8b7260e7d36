"""Errors raised when input files do not match the formats the platform reads."""


class DataFormatError(ValueError):
    """A data file (EHR CSV or PathMNIST npz) is not in the expected format.

    The message is one sentence that names what was wrong and what to do, because an
    operator sees it on the command line, not a traceback.
    """
