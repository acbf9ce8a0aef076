"""Build bench/_wsgen.pyx in place on first use (and again when the .pyx is newer).

A failed build fails loudly: the generator has no pure-Python fallback, because one would
be the bottleneck it exists to avoid. Needs Cython (a build dependency of the relay already)
and a C compiler.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PYX = HERE / "_wsgen.pyx"


class BuildError(RuntimeError):
    pass


def _built_path() -> Path:
    return HERE / ("_wsgen" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def _stale() -> bool:
    so = _built_path()
    return not so.exists() or so.stat().st_mtime < PYX.stat().st_mtime


def _build() -> None:
    script = (
        "from setuptools import setup, Extension\n"
        "from Cython.Build import cythonize\n"
        f"ext = Extension('bench._wsgen', [{str(PYX)!r}], extra_compile_args=['-O3'])\n"
        "setup(name='bench-wsgen', ext_modules=cythonize([ext], quiet=True,"
        " compiler_directives={'language_level': 3}),"
        " script_args=['build_ext', '--inplace', '--build-temp',"
        f" {str(HERE / 'build')!r}])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(HERE.parent),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 or not _built_path().exists():
        raise BuildError(
            "could not compile bench/_wsgen.pyx (needs Cython and a C compiler):\n"
            + proc.stdout[-2000:]
            + proc.stderr[-4000:]
        )


def load() -> ModuleType:
    """Import bench._wsgen, compiling it first if needed (serialized with a file lock)."""
    if _stale():
        lock = HERE / ".wsgen.lock"
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if _stale():
                    _build()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.utime(_built_path())
        importlib.invalidate_caches()
    return importlib.import_module("bench._wsgen")


if __name__ == "__main__":
    mod = load()
    print(f"built {mod.__file__}")
