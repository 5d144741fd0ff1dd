"""polyllama: a plugin-based, multi-backend LLaMA inference runtime.

Plugins import only what this module re-exports.
"""
from .checkpoint import Checkpoint, QuantizedArray
from .config import LlamaConfig
from .device import Allocator, Buffer, Device, DeviceSpec
from .errors import (ContextLengthError, DeviceError, KernelNotFoundError, ModelFormatError,
                     PluginError, PolyllamaError, TokenizerError, UsageError)
from .hookspecs import hookimpl
from .ops import Weight
from .registry import get_device, get_registry
from .tensor import Tensor

__version__ = "0.1.0"


def __getattr__(name):            # the engine pulls in loaders and tokenizers: import on use
    if name == "LLM":
        from .engine import LLM
        return LLM
    raise AttributeError(f"module 'polyllama' has no attribute {name!r}")


__all__ = ["Allocator", "Buffer", "Checkpoint", "ContextLengthError", "Device", "DeviceError",
           "DeviceSpec", "KernelNotFoundError", "LLM", "LlamaConfig", "ModelFormatError",
           "PluginError", "PolyllamaError", "QuantizedArray", "Tensor", "TokenizerError",
           "UsageError", "Weight", "get_device", "get_registry", "hookimpl"]
