"""Bounded load drivers for a headcast server on this machine (loopback only).

``python -m loadtests --url http://127.0.0.1:8000 --sessions 2 --duration 20`` opens N
WebRTC sessions with ``headcast_client``, each speaking a synthetic voice into its
microphone track, and reports the received frame rate per session and the server's
real-time factor from ``/metrics``. Counts and durations are capped; the target must be a
loopback address.
"""
