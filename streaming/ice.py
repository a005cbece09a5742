"""Which local addresses aiortc offers as ICE host candidates.

aiortc gathers host candidates through ``aioice``, whose ``get_host_addresses`` skips
127.0.0.1 as RFC 8445 §5.1.1.1 asks. On a host with no other interface (a container, CI, a
laptop offline) that leaves a peer connection with no candidates at all, so loopback
candidates are an explicit opt-in here, as in pion (``SetIncludeLoopbackCandidate``) and
libjuice (``JUICE_ENABLE_LOCALHOST_ADDRESS``).

How: ``host_candidates(policy)`` is a context manager; inside it, candidate gathering started
by the current task (``RTCPeerConnection.setLocalDescription`` gathers in tasks that copy the
caller's context) sees the addresses ``policy`` chooses. The choice travels in a
``ContextVar``, so other peer connections in the process keep aioice's default behaviour.
The hook wraps ``aioice.ice.get_host_addresses`` once, on first use; it raises
``IcePolicyUnsupported`` if aioice no longer has that function, rather than failing quietly.

``host_addresses(policy)`` says which addresses that is (empty: this host has none to offer).

Owns only the address policy; knows nothing about sessions, tracks or the server.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aioice.ice

logger = logging.getLogger(__name__)

LOOPBACK_IPV4 = "127.0.0.1"
"""The IPv4 loopback address offered when loopback candidates are on."""

_HOOK_MARKER = "__headcast_host_candidate_hook__"


class IcePolicyUnsupported(RuntimeError):
    """The installed aioice has no ``get_host_addresses`` hook to apply the policy to."""


@dataclass(frozen=True)
class HostCandidatePolicy:
    """Which local addresses become ICE host candidates."""

    include_loopback: bool = False
    """Also offer 127.0.0.1 (needed on loopback-only hosts; reachable from this host only)."""

    loopback_only: bool = False
    """Offer 127.0.0.1 and nothing else (tests, single-host demos): nothing off this host
    can connect."""

    @property
    def is_default(self) -> bool:
        """True when the policy is aioice's own behaviour."""
        return not (self.include_loopback or self.loopback_only)

    def choose(self, default_addresses: list[str], use_ipv4: bool) -> list[str]:
        """The host addresses to gather on, given aioice's ``default_addresses``."""
        if not use_ipv4 or self.is_default:
            return default_addresses
        if self.loopback_only:
            return [LOOPBACK_IPV4]
        return [LOOPBACK_IPV4, *[a for a in default_addresses if a != LOOPBACK_IPV4]]


# A ContextVar is the one module-level object here: it holds no value of its own (each task
# context has its own), which is what scopes the policy to one gathering.
_current_policy: contextvars.ContextVar[HostCandidatePolicy] = contextvars.ContextVar(
    "headcast_host_candidate_policy"
)
_AIOICE_DEFAULT = HostCandidatePolicy()


def _install_hook() -> None:
    current = getattr(aioice.ice, "get_host_addresses", None)
    if current is None or not callable(current):
        raise IcePolicyUnsupported(
            "aioice.ice.get_host_addresses is missing in this aioice version; loopback ICE "
            "candidates cannot be enabled. Pin aioice 0.9-0.13 or turn ice_loopback off."
        )
    if getattr(current, _HOOK_MARKER, False):
        return
    original: Callable[[bool, bool], list[str]] = current

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        return _current_policy.get(_AIOICE_DEFAULT).choose(addresses, use_ipv4)

    setattr(get_host_addresses, _HOOK_MARKER, True)
    aioice.ice.get_host_addresses = get_host_addresses
    logger.debug("installed the ICE host-candidate policy hook on aioice")


@contextlib.contextmanager
def host_candidates(policy: HostCandidatePolicy) -> Iterator[None]:
    """Apply ``policy`` to ICE gathering started inside this block (in this task)."""
    if policy.is_default:
        yield
        return
    _install_hook()
    token = _current_policy.set(policy)
    try:
        yield
    finally:
        _current_policy.reset(token)


def host_addresses(policy: HostCandidatePolicy) -> list[str]:
    """The addresses host candidates would be gathered on under ``policy`` (IPv4 and IPv6):
    empty means this host cannot offer any, whatever the peer sends."""
    with host_candidates(policy):
        return list(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))
