"""Where the processes of a parallel group on this host meet, and the environment they get.

Owns ``CHILD_ENV`` (set in every process headcast starts for a group, before it touches NCCL:
NVLink multicast off for NCCL, symmetric memory and NVSHMEM, because multicast objects can
take the host's GPUs out of service), ``LOOPBACK_HOST`` and ``free_port`` (where rank 0's
``torch.distributed`` TCP store listens). Free of torch, so the server can start worker
processes without importing it.

Knows nothing about how the processes are started or what they compute.
"""

from __future__ import annotations

import socket

CHILD_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""Set in every process started for a group, before it touches NCCL: no NVLink multicast."""

LOOPBACK_HOST = "127.0.0.1"
"""Where rank 0's TCP store listens (the group never leaves the host)."""


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        return int(sock.getsockname()[1])
