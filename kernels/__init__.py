"""Fused Triton kernels, each with its eager PyTorch reference in the same file.

Every public op dispatches the same way: CUDA tensors -> Triton; TRITON_INTERPRET=1 -> Triton on CPU through the
interpreter (how the CPU tests exercise the kernels; set it before importing this package); otherwise the eager
reference. Run the kernel tests with `python -m pytest -q tests/test_kernels.py`.
Note: `kernels.grpo_loss` is the function; reach the module's other names with `from kernels.grpo_loss import ...`.
"""
from kernels.covariance import group_correlation, group_covariance
from kernels.grpo_loss import grpo_loss
from kernels.logprobs import token_logprobs

__all__ = ["group_correlation", "group_covariance", "grpo_loss", "token_logprobs"]
