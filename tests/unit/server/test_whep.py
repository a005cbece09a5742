"""The WHEP routes' HTTP contract on a scripted engine: statuses, headers, auth before the body.

The app is real (``FakeEngine`` instead of a model); offers come from a real aiortc peer. A
small STUN responder on 127.0.0.1 stands in for the deployment's STUN server, so the
server's own ICE gathering answers at once while the ``Link: rel="ice-server"`` header is
checked. Media over WHEP is tested in tests/integration/test_whep.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from aioice import stun
from aiortc import RTCIceServer, RTCPeerConnection
from fastapi.testclient import TestClient

from headcast.server.app import create_app
from headcast.server.routes.whep import MAX_SDP_BYTES, ice_server_links
from tests.conftest import FakeEngine
from tests.unit.server.test_app import _assert_problem, _settings, _wait_ready

SDP = "application/sdp"
STUN_POLL_S = 0.2


class StunResponder:
    """Answers STUN binding requests on 127.0.0.1 with the sender's address (a tiny STUN server)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(STUN_POLL_S)
        self.port = int(self._socket.getsockname()[1])
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-stun", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self._socket.recvfrom(2048)
            except TimeoutError:
                continue
            request = stun.parse_message(data)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = address
            self._socket.sendto(bytes(response), address)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def stun_server() -> Iterator[StunResponder]:
    responder = StunResponder()
    try:
        yield responder
    finally:
        responder.close()


@pytest.fixture
def client(stun_server: StunResponder) -> Iterator[TestClient]:
    settings = _settings(
        ice_loopback_only=True, ice_servers=[{"urls": [f"stun:127.0.0.1:{stun_server.port}"]}]
    )
    with TestClient(create_app(settings, engine=FakeEngine(96, 64))) as test_client:
        _wait_ready(test_client)
        yield test_client


def recvonly_offer() -> str:
    """The SDP offer of a WHEP player: recvonly audio and video, every candidate gathered."""

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def _push_session(client: TestClient) -> dict[str, str]:
    response = client.post("/v1/sessions", json={"audio_source": "push"})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def _auth(session: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['token']}"}


def test_an_offer_is_answered_201_with_location_and_ice_server_links(
    client: TestClient, stun_server: StunResponder
) -> None:
    session = _push_session(client)
    endpoint = f"/v1/sessions/{session['id']}/whep"
    response = client.post(
        endpoint, content=recvonly_offer(), headers={"Content-Type": SDP, **_auth(session)}
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == SDP
    assert response.text.startswith("v=0") and "a=candidate" in response.text
    assert "a=sendonly" in response.text and "a=recvonly" not in response.text
    assert response.headers["location"] == f"{endpoint}/peer"
    assert response.headers.get_list("link") == [
        f'<stun:127.0.0.1:{stun_server.port}>; rel="ice-server"'
    ]
    assert stun_server.answered > 0, "the server's ICE agent never asked the STUN server"

    again = client.post(
        endpoint, content=recvonly_offer(), headers={"Content-Type": SDP, **_auth(session)}
    )
    _assert_problem(again, 409, "already-connected")

    location = response.headers["location"]
    _assert_problem(client.delete(location), 401, "unauthorized")
    deleted = client.delete(location, headers=_auth(session))
    assert deleted.status_code == 200 and deleted.content == b""
    _assert_problem(client.delete(location, headers=_auth(session)), 404, "unknown-session")


def test_the_token_is_checked_before_the_body_and_the_body_is_sdp(client: TestClient) -> None:
    session = _push_session(client)
    other = _push_session(client)
    endpoint = f"/v1/sessions/{session['id']}/whep"
    offer = recvonly_offer()

    anonymous = client.post(endpoint, content=offer, headers={"Content-Type": SDP})
    _assert_problem(anonymous, 401, "unauthorized")
    _assert_problem(
        client.post(endpoint, content=offer, headers={"Content-Type": SDP, **_auth(other)}),
        403,
        "forbidden",
    )
    _assert_problem(
        client.post(
            "/v1/sessions/nope/whep", content=offer, headers={"Content-Type": SDP, **_auth(session)}
        ),
        404,
        "unknown-session",
    )
    wrong_type = client.post(endpoint, json={"sdp": offer, "type": "offer"}, headers=_auth(session))
    _assert_problem(wrong_type, 415, "unsupported-media-type")
    assert wrong_type.headers["accept-post"] == SDP
    _assert_problem(
        client.post(
            endpoint,
            content=b"v=0\r\n" + b"a" * MAX_SDP_BYTES,
            headers={"Content-Type": SDP, **_auth(session)},
        ),
        413,
        "offer-too-large",
    )
    _assert_problem(
        client.post(
            endpoint, content="not sdp at all", headers={"Content-Type": SDP, **_auth(session)}
        ),
        400,
        "bad-offer",
    )
    options = client.options(endpoint)
    assert options.status_code == 204 and options.headers["accept-post"] == SDP


def test_patch_is_405_with_allow_since_there_is_no_trickle_ice(client: TestClient) -> None:
    session = _push_session(client)
    response = client.patch(
        f"/v1/sessions/{session['id']}/whep/peer",
        content="a=ice-ufrag:abcd\r\na=ice-pwd:efgh\r\n",
        headers={"Content-Type": "application/trickle-ice-sdpfrag", **_auth(session)},
    )
    body = _assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "DELETE"
    assert "trickle ICE" in body["detail"]


def test_ice_server_links_carry_turn_credentials_quoted() -> None:
    links = ice_server_links(
        [
            RTCIceServer(urls="stun:stun.example.net"),
            RTCIceServer(
                urls=["turn:turn.example.net?transport=udp", "turns:turn.example.net"],
                username="user",
                credential='pa"ss',
            ),
        ]
    )
    assert links == [
        '<stun:stun.example.net>; rel="ice-server"',
        '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; '
        'credential="pa\\"ss"; credential-type="password"',
        '<turns:turn.example.net>; rel="ice-server"; username="user"; '
        'credential="pa\\"ss"; credential-type="password"',
    ]
