r"""``exp`` in operations that LLVM vectorises, for the validation pass's sigmoid (``core.evaluate_mse``).

A call to the C library's ``exp`` is one row's at a time; the same algorithm written out here runs on a
window of rows in vector registers. The algorithm is the C library's (glibc since 2.28, after ARM's
optimized-routines): with ``N = 128``,

* ``x = k ln2 / N + r``, ``k`` the nearest integer to ``x N / ln2`` (added to ``1.5 * 2^52`` and read
  back from the low bits), ``r`` from ``ln2 / N`` split in two parts (the first ends in zero bits, so
  that ``k`` times it is exact);
* ``2^(k/N) = 2^(k div N) 2^(j/N)``, ``j = k mod N``: a table holds each ``2^(j/N)`` rounded to a double
  (``scale``) and the relative error of that rounding (``tail``), and ``k div N`` goes into the exponent
  bits;
* ``exp(x) ~= scale + scale (tail + r + r^2 (C2 + C3 r) + r^4 (C4 + C5 r))``, every multiply-add fused.

The table is made here from ``2^(j/128)`` to 60 digits (:func:`_exp_table`); the coefficients are the
library's. For ``2^-54 <= |x| < 512`` (:func:`exp_in_range`) the result equals glibc's on
x86-64 Linux, bit for bit (its FMA build fuses the same operations; tests/test_evaluate.py compares the
two on random inputs), and is within about half an ulp of ``exp(x)`` anywhere. Outside that range
the caller uses ``math.exp`` (tiny ``|x|``, overflow, underflow, NaN).
"""

from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np
from numba import njit

from ._llvm import bits_of, float_of, fused_multiply_add

__all__ = ["EXP_MIN", "EXP_MAX", "exp_in_range", "exp_fast"]

#: :func:`exp_fast` is the library's ``exp`` for ``EXP_MIN <= |x| < EXP_MAX``.
EXP_MIN, EXP_MAX = 2.0**-54, 512.0
_N = 128
_INV_LN2_N = float.fromhex("0x1.71547652b82fep+7")  # N / ln2
_NEG_LN2_HI_N = float.fromhex("-0x1.62e42fefa0000p-8")  # -ln2 / N, its leading bits
_NEG_LN2_LO_N = float.fromhex("-0x1.cf79abc9e3b3ap-47")  # the rest
_SHIFT = float.fromhex("0x1.8p52")  # z + SHIFT rounds z to an integer, held in the low bits
_C2, _C3, _C4, _C5 = (  # the library's polynomial for exp(r) - 1 - r, from r^2 on
    float.fromhex(c)
    for c in ("0x1.ffffffffffdbdp-2", "0x1.555555555543cp-3", "0x1.55555cf172b91p-5", "0x1.1111167a4d017p-7")
)


def _exp_table() -> np.ndarray:
    """``[tail_0, scale_0 - (0 << 45), tail_1, scale_1 - (1 << 45), ...]`` as 64-bit patterns: ``scale_j``
    is ``2^(j/128)`` rounded to a double and ``tail_j`` its relative rounding error, rounded; ``j << 45``
    is taken off the scale's bits so that adding ``k << 45`` puts ``k div 128`` in the exponent."""
    table = np.empty(2 * _N, dtype=np.uint64)
    with localcontext() as context:
        context.prec = 60
        ln2 = Decimal(2).ln()
        for j in range(_N):
            exact = (ln2 * j / _N).exp()
            scale = float(exact)  # the nearest double
            tail = float((exact - Decimal(scale)) / Decimal(scale))
            table[2 * j] = np.float64(tail).view(np.uint64)
            table[2 * j + 1] = np.uint64((int(np.float64(scale).view(np.uint64)) - (j << 45)) % (1 << 64))
    return table


_TABLE = _exp_table()


@njit(cache=True, inline="always", error_model="numpy")
def exp_in_range(x):
    """Whether :func:`exp_fast` computes ``exp(x)`` as the library does (``EXP_MIN <= |x| < EXP_MAX``)."""
    size = abs(x)
    return (size >= EXP_MIN) & (size < EXP_MAX)


@njit(cache=True, inline="always", error_model="numpy")
def exp_fast(x):
    """``exp(x)`` for a float64 ``x`` with ``EXP_MIN <= |x| < EXP_MAX`` (the module docstring); for other
    ``x`` (NaN included) a number the caller replaces. No branch, no call: a loop of it vectorises."""
    x = min(max(x, -EXP_MAX), EXP_MAX)  # keeps k's bits in range for any x
    shifted = fused_multiply_add(x, _INV_LN2_N, _SHIFT)
    k = bits_of(shifted)
    kd = shifted - _SHIFT
    r = fused_multiply_add(kd, _NEG_LN2_LO_N, fused_multiply_add(kd, _NEG_LN2_HI_N, x))
    j = (k & np.uint64(_N - 1)) * np.uint64(2)
    tail = float_of(_TABLE[j])
    scale = float_of(_TABLE[j + np.uint64(1)] + (k << np.uint64(45)))
    r2 = r * r
    low = fused_multiply_add(fused_multiply_add(r, _C3, _C2), r2, r + tail)
    poly = fused_multiply_add(r2 * r2, fused_multiply_add(r, _C5, _C4), low)
    return fused_multiply_add(scale, poly, scale)
