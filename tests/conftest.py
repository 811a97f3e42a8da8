"""Shared test setup. Run everything with `python -m pytest -q` from the repo root.

TRITON_INTERPRET=1 must be set before `kernels` is imported (triton reads it when @triton.jit
decorates a function), so the kernel tests exercise the real Triton kernels on CPU. Tests that
launch training in a subprocess drop it from the child's environment so the eager paths run at full speed.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402  (after TRITON_INTERPRET, see above)
import torch  # noqa: E402

import arith  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes: one intra-op thread is faster, and immune to OpenMP stalls when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The arith base model recipe cut to 30 warm-start steps: real tokenizer and format, half-trained weights (built
    once per test session, for every test that runs train.py on it)."""
    return arith.build_base_model(str(tmp_path_factory.mktemp("arith") / "base"), steps=30)
