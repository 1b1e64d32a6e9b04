"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class SdrtError(Exception):
    """Base class: the message says what went wrong and what to do about it."""

    exit_code = 2


class ModelFolderError(SdrtError):
    """A model folder, or a file in it, is missing, unreadable or malformed."""


class ConfigError(SdrtError):
    """A configuration value is unknown, out of range or inconsistent."""
