"""The one attention dispatch function every attention layer of the pipeline calls.

Owns: choosing the kernel for softmax attention over ``[B, L, heads, head_dim]`` tensors
(flash-attn when it is importable and the tensors are half precision on CUDA, otherwise
PyTorch SDPA, which on CPU in float32 is exact float32 softmax attention), and the named
SDPA backend preferences (``sdpa_backends``: cuDNN first on Hopper is the fastest PyTorch
kernel there). Knows nothing about projections, positions, masks or models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:  # optional GPU kernel; resolved once at import so the forward has no lookups
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # not installed (always the case on CPU machines): SDPA is the path
    _flash_attn_func = None

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Dtypes the flash-attn kernels accept."""

FLASH_ATTN_MAX_HEAD_DIM = 256
"""Largest head dimension flash-attn supports."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention, scale ``1/sqrt(head_dim)``, no mask; layout ``[B, L, heads, head_dim]``.

    ``q`` is ``[B, Lq, H, D]``, ``k`` and ``v`` are ``[B, Lk, H, D]``; returns ``[B, Lq, H, D]``
    in ``v``'s dtype (``q`` and ``k`` are cast to it, as the official code does after RoPE).
    """
    q = q.to(v.dtype)
    k = k.to(v.dtype)
    if (
        _flash_attn_func is not None
        and q.is_cuda
        and v.dtype in HALF_DTYPES
        and q.shape[-1] <= FLASH_ATTN_MAX_HEAD_DIM
    ):
        flash: torch.Tensor = _flash_attn_func(q, k, v)  # [B, Lq, H, D]
        return flash
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )  # [B, H, Lq, D]
    return out.transpose(1, 2)  # [B, Lq, H, D]


SDPA_PREFERENCES: dict[str, tuple[SDPBackend, ...]] = {
    "cudnn": (
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ),
    "flash": (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH),
    "math": (SDPBackend.MATH,),
}
"""SDPA kernels to try, in order, per preference name; each falls back to the next kernel
for shapes the first does not take. ``auto`` (not listed) keeps PyTorch's own order."""

ATTENTION_BACKENDS = ("auto", *SDPA_PREFERENCES)
"""Names ``sdpa_backends`` accepts."""


@contextlib.contextmanager
def sdpa_backends(name: str) -> Iterator[None]:
    """Run the enclosed SDPA calls with the named kernel preference (``auto``: PyTorch's).

    Under ``torch.compile`` the kernel is chosen when the graph is traced, so enter this
    around the first (compiling) call as around every later one.
    """
    if name == "auto":
        yield
        return
    try:
        backends = SDPA_PREFERENCES[name]
    except KeyError:
        raise ValueError(
            f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}"
        ) from None
    with sdpa_kernel(list(backends), set_priority=True):
        yield
