"""Per-packet analysis in compiled code (Cython, the GIL released in the loops).

`_native` is built from `_native.pyx` when the package is installed (`pip install .` or `-e .`),
or in place with `python3 setup.py build_ext --inplace`.
"""
