"""The compiled part of retrotap (capture_backend/_native.pyx), built by setuptools with Cython.

Everything else about the package is in pyproject.toml. Needs gcc and the Python headers
(Debian: `apt-get install gcc python3-dev`). In place, for a checkout: `python3 setup.py build_ext --inplace`.
"""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "capture_backend._native",
        ["capture_backend/_native.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O2"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
