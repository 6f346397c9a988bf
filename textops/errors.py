"""Errors that speak to the user: the stage CLI prints them without a traceback and exits 1."""


class PipelineError(ValueError):
    """An input, params or gate problem the user can fix; the message says what and where."""


class GateFailed(PipelineError):
    """A quality gate in a stage refused the result; the message names the params key."""
