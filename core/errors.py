"""Errors users can act on. The CLI prints their message and exits non-zero, with no traceback."""


class PolyllamaError(Exception):
    """Base of every error whose message tells the user what was wrong and what to do."""


class ModelFormatError(PolyllamaError):
    """A checkpoint is corrupt, truncated, of an unknown format, or has nonsensical values."""


class TokenizerError(PolyllamaError):
    """A tokenizer file is unreadable or does not match the model."""


class DeviceError(PolyllamaError):
    """A device spec is unknown or its backend is unavailable."""


class KernelNotFoundError(PolyllamaError):
    """A backend lacks a kernel for (backend, op, weight format)."""


class PluginError(PolyllamaError):
    """A plugin registered something invalid (duplicate id, bad value)."""


class ContextLengthError(PolyllamaError):
    """A prompt (plus generation) does not fit into the model's context."""


class UsageError(PolyllamaError):
    """Bad arguments: malformed token ids, out-of-range sampling parameters and the like."""
