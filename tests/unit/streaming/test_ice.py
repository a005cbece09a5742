"""Loopback ICE candidates: opt-in, scoped to the gathering that asked for them."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection

from headcast.streaming.ice import HostCandidatePolicy, host_candidates


async def _gathered_hosts(policy: HostCandidatePolicy | None) -> set[str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        offer = await pc.createOffer()
        if policy is None:
            await pc.setLocalDescription(offer)
        else:
            with host_candidates(policy):
                await pc.setLocalDescription(offer)
        lines = [x for x in pc.localDescription.sdp.splitlines() if x.startswith("a=candidate")]
        return {line.split()[4] for line in lines}
    finally:
        await pc.close()


def test_policy_choices() -> None:
    found = ["192.0.2.7", "fd00::7"]
    assert HostCandidatePolicy().choose(found, use_ipv4=True) == found
    assert HostCandidatePolicy(include_loopback=True).choose(found, use_ipv4=True) == [
        "127.0.0.1",
        *found,
    ]
    assert HostCandidatePolicy(loopback_only=True).choose(found, use_ipv4=True) == ["127.0.0.1"]
    assert HostCandidatePolicy(loopback_only=True).choose(found, use_ipv4=False) == found


async def test_loopback_only_gathers_127_0_0_1_and_nothing_else() -> None:
    assert await _gathered_hosts(HostCandidatePolicy(loopback_only=True)) == {"127.0.0.1"}


async def test_default_gathering_is_untouched_outside_the_block() -> None:
    await _gathered_hosts(HostCandidatePolicy(loopback_only=True))  # installs the hook
    assert "127.0.0.1" not in await _gathered_hosts(None)
