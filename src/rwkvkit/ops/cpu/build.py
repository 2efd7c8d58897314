"""Building the CPU kernel extensions on first use: shared by :mod:`rwkvkit.ops.cpu.wkv_seq` and
:mod:`rwkvkit.inference.kernels.gemv` (imports nothing of rwkvkit).

Each extension module keeps its own load-once state (lock, loaded operators, failed flag); this
module holds what they share: the disable switch, finding ``ninja``, the compile call (with the
headers' hash in the flags, since torch's build cache keys on sources and flags only) and the one
warning a failed build logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ENV_DISABLE = "RWKVKIT_NO_KERNELS"  # set to 1 (any value but "" or "0") to use the PyTorch operators
FLAGS = ["-O3", "-fopenmp"]  # no -march=native: the SIMD code is selected per CPU at run time


def disabled() -> bool:
    """Whether ``RWKVKIT_NO_KERNELS`` asks for the PyTorch operators."""
    return os.environ.get(ENV_DISABLE, "") not in ("", "0")


@contextlib.contextmanager
def ninja_on_path() -> Iterator[None]:
    """Make ``ninja`` findable for the build, which looks it up on ``PATH`` only.

    ``pip install ninja`` puts the binary next to the interpreter (``.venv/bin``), which is not on
    ``PATH`` when the environment is used without being activated.
    """
    if shutil.which("ninja") is not None:
        yield
        return
    dirs = [str(Path(sys.executable).parent)]
    with contextlib.suppress(Exception):
        import ninja  # type: ignore[import-not-found]  # the PyPI package: its binary folder

        dirs.append(str(ninja.BIN_DIR))
    extra = [d for d in dirs if shutil.which("ninja", path=d)]
    old = os.environ.get("PATH", "")
    if extra:
        os.environ["PATH"] = os.pathsep.join([old, *extra[:1]])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def compile_extension(name: str, sources: Sequence[Path], headers: Sequence[Path] = ()) -> float:
    """Compile (or load from torch's cache) a TORCH_LIBRARY extension; returns the seconds it took.

    Raises whatever the build raises (no compiler, no ninja, a compile error) and RuntimeError off
    x86-64 Linux, which the kernels target.
    """
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        raise RuntimeError(f"the kernel targets x86-64 Linux, this is {sys.platform}/{platform.machine()}")
    from torch.utils.cpp_extension import load

    cflags = list(FLAGS)
    if headers:  # a harmless macro holding the headers' hash: an edited header forces a rebuild
        digest = hashlib.sha256(b"".join(Path(p).read_bytes() for p in headers)).hexdigest()[:16]
        cflags.append(f"-DRWKVKIT_HEADERS_{digest}")
    t0 = time.perf_counter()
    with ninja_on_path():
        # is_python_module=False: the library registers torch.ops.<namespace>.* (TORCH_LIBRARY)
        load(
            name=name,
            sources=[str(p) for p in sources],
            extra_cflags=cflags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    return time.perf_counter() - t0


def warn_build_failed(log: logging.Logger, what: str, instead: str, error: Exception) -> None:
    """The one warning of a failed build (shortened message; the full one at debug level)."""
    msg = str(error).strip()
    short = msg if len(msg) <= 400 else msg[:200] + " ... " + msg[-200:]
    name = type(error).__name__
    log.warning("rwkvkit: the %s could not be built (%s: %s); using %s instead.", what, name, short, instead)
    log.debug("%s build error in full:\n%s", what, msg)
