"""Compiled kernels: ``cpu`` (Numba ``@njit``) and ``cuda`` (``numba.cuda``), same names, same argument order."""
