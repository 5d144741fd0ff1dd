"""One entry point for every checkpoint format; the format is read off the path itself."""
from __future__ import annotations

import os

from .checkpoint import Checkpoint
from .errors import ModelFormatError


def load_checkpoint(path) -> Checkpoint:
    """A Hugging Face directory (config.json), a GGUF file (magic b"GGUF"), or a llama2.c-family
    file (anything else; its loader checks the header against the file size)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelFormatError(f"{path}: a directory without config.json; give a Hugging "
                                   "Face model directory or a checkpoint file")
        from .hf import load_hf_dir
        return load_hf_dir(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot open the model ({e.strerror}); give a "
                               "checkpoint file, a Hugging Face directory or a model name "
                               "(polyllama list)") from e
    if magic == b"GGUF":
        from .gguf_file import load_gguf
        return load_gguf(path)
    from .llama2c import load_llama2c
    return load_llama2c(path)
