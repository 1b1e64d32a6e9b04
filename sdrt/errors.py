"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class SdrtError(Exception):
    """Base class: the message says what went wrong and what to do about it."""

    exit_code = 2


class ModelFolderError(SdrtError):
    """A model folder, or a file in it, is missing, unreadable or malformed."""


class ConfigError(SdrtError):
    """A configuration value is unknown, out of range or inconsistent."""


class GenerationError(SdrtError):
    """A request cannot be generated as asked; `param` names the request field at fault
    (None for a failure that is no field's, such as a NaN image)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
