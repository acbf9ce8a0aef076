"""Build hook for the compiled hot path.

`relay/_fast.pyx` (the Cython twin of `relay/core/hotpath.py`) is built here once it
exists. `RELAY_NO_EXTENSIONS=1` skips the build entirely; otherwise a failed compile
fails the install loudly: a silent fallback is a performance bug nobody sees.
"""

import os
from pathlib import Path

from setuptools import setup

ext_modules = []
pyx = Path(__file__).parent / "relay" / "_fast.pyx"
if os.environ.get("RELAY_NO_EXTENSIONS") != "1" and pyx.exists():
    from Cython.Build import cythonize  # build requirement: fail loudly if missing

    debug = os.environ.get("RELAY_DEBUG_BUILD") == "1"
    directives = {"language_level": "3", "boundscheck": debug, "wraparound": debug}
    if debug:
        directives["linetrace"] = True
    ext_modules = cythonize(["relay/_fast.pyx"], compiler_directives=directives)

setup(ext_modules=ext_modules)
