"""Build hook for the compiled hot path.

`relay/_fast.pyx` (the compiled twin; its pure-Python reference is `relay/core/pure.py`,
and `relay/twin.py` picks one at import) is built here. `RELAY_NO_EXTENSIONS=1` skips the
build entirely; otherwise a failed compile fails the install loudly: a silent fallback is a
performance bug nobody sees.
"""

import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
# The browser SDK modules the demo page imports (relay/server/demo.py, SDK_FILES). A wheel
# carries copies in relay/demo/sdk/; a source checkout serves sdk/browser/ itself, so the
# repository has one copy of the SDK.
DEMO_SDK_FILES = ["presence.js", "msgpack.js", "ui.js", "adapters/textarea.js"]


class BuildPyWithDemoSdk(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the source tree is the package: nothing to copy
            return
        for name in DEMO_SDK_FILES:
            target = Path(self.build_lib) / "relay" / "demo" / "sdk" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / "sdk" / "browser" / name, target)

ext_modules = []
pyx = HERE / "relay" / "_fast.pyx"
if os.environ.get("RELAY_NO_EXTENSIONS") != "1" and pyx.exists():
    from Cython.Build import cythonize  # build requirement: fail loudly if missing

    # RELAY_DEBUG_BUILD=1: bounds checks and line tracing on (`make test-debug` runs the
    # parity tests against it). The release build trusts the explicit checks in the code.
    debug = os.environ.get("RELAY_DEBUG_BUILD") == "1"
    directives = {"language_level": "3", "boundscheck": debug, "wraparound": debug,
                  "initializedcheck": debug, "linetrace": debug}
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if debug else []
    ext = Extension("relay._fast", ["relay/_fast.pyx"], define_macros=macros)
    ext_modules = cythonize([ext], compiler_directives=directives, force=debug)

setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithDemoSdk})
