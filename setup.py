"""Build p2psync, with its Cython core when a compiler and Cython are there.

The extension is optional: without Cython or a C compiler `pip install .`
still succeeds and p2psync runs on its pure-Python twin
(`p2psync --version` says which). `P2PSYNC_REQUIRE_EXTENSIONS=1` makes a
failed build an error (CI sets it); `P2PSYNC_NO_EXTENSIONS=1` skips the build.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

REQUIRE = os.environ.get("P2PSYNC_REQUIRE_EXTENSIONS") == "1"


def speedups() -> list[Extension]:
    if os.environ.get("P2PSYNC_NO_EXTENSIONS") == "1" and not REQUIRE:
        print("p2psync: P2PSYNC_NO_EXTENSIONS=1; installing the pure-Python twin", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("p2psync: no Cython; installing the pure-Python twin", file=sys.stderr)
        return []
    exts = cythonize(
        [Extension("p2psync._speedups", ["ext/_speedups.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": 3, "embedsignature": True},
    )
    for ext in exts:  # cythonize drops `optional`, so set it afterwards
        ext.optional = not REQUIRE
    return exts


setup(ext_modules=speedups())
