#!/usr/bin/env bash
# The whole test setup and run, as the README gives it and CI runs it:
#   1. install the CPU build of torch (the test reference) first, unless a torch is already installed,
#      so the loose `torch>=2.2` pin of the test extra is already met and pip never pulls a multi-GB
#      CUDA build;
#   2. install mfscratch with its test and cuda extras (a regular install, as the README's first
#      command does: an editable install over a regular one can be shadowed by the folder of Numba
#      cache files that the regular one leaves behind);
#   3. run the tests, then the CUDA kernel tests in their own process under Numba's CUDA simulator
#      (NUMBA_ENABLE_CUDASIM must be set before numba is first imported).
# Real-data tests run when MFSCRATCH_DATA points at a folder holding ml-100k/ (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import torch' 2>/dev/null || python -m pip install -q --root-user-action=ignore torch==2.13.0
python -m pip install -q --root-user-action=ignore '.[test,cuda]'
python -m pytest -q -m "not cudasim" "$@"
NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -m cudasim "$@" || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }  # 5: none collected
