"""Build the Cython extensions in ext/ into the engine._native package.

Every ext/NAME.pyx becomes the module engine._native.NAME, so adding a kernel
needs no change here. Compiler directives are set once for all modules: the
kernels index with checked lengths of their own, so Cython's bounds checks and
negative-index wrapping are off.
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def native_extensions():
    # WARDWATCH_EXT=reader,decode builds only those modules: a quicker
    # edit-compile loop for `python setup.py build_ext --inplace`.
    only = {n for n in os.environ.get("WARDWATCH_EXT", "").split(",") if n}
    extensions = []
    for pyx in sorted(glob.glob(os.path.join("ext", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if only and name not in only:
            continue
        extensions.append(
            Extension(
                f"engine._native.{name}",
                sources=[pyx],
                include_dirs=[numpy.get_include(), "ext"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3", "-fno-strict-aliasing"],
            )
        )
    return extensions


setup(
    ext_modules=cythonize(
        native_extensions(),
        include_path=["ext"],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        nthreads=os.cpu_count() or 1,
    ),
)
