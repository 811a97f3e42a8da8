"""Shared test setup. Run everything with `python -m pytest -q` from the repo root.

TRITON_INTERPRET=1 must be set before `kernels` is imported (triton reads it when @triton.jit
decorates a function), so the kernel tests exercise the real Triton kernels on CPU. Tests that
launch training in a subprocess drop it from the child's environment so the eager paths run at full speed.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
