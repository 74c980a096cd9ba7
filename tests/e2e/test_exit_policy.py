"""The default exit policy refuses private destinations before any packet.

The exit's network is a fake that fails the test if it is ever asked to
connect, so a bug here cannot send a packet anywhere.
"""

import pytest
import trio
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.errors import StreamError
from hopchain.messages import EndReason

from .conftest import seed

pytestmark = pytest.mark.trio


class NoConnectNetwork:
    """A Network whose connect fails the test: nothing may be contacted."""

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.Stream:
        pytest.fail(f"exit tried to connect to {host}:{port}")

    async def listen(self, host: str, port: int) -> list[trio.SocketListener]:
        raise AssertionError("not used")

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in NAMES:
            return NAMES[host]
        if host.endswith(".invalid"):
            raise OSError(-2, "Name or service not known")
        return [host]


NAMES = {
    "localhost": ["::1", "127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["10.0.0.1", "::ffff:192.168.0.1"],
}


def _exit(test_network: bool) -> RelayNode:
    config = RelayConfig(
        nickname="exit", address="127.0.0.9", exit=True, test_network=test_network
    )
    return RelayNode(
        config, IdentityKey(seed("x")), OnionKey(seed("y")), NoConnectNetwork()
    )


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "0.0.0.0",
        "127.0.0.1",
        "localhost",
        "metadata.test",
        "mixed.test",
        "::ffff:127.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
    ],
)
async def test_default_policy_refuses_private_destinations(host: str) -> None:
    node = _exit(test_network=False)
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.connect_to_destination(host, 80)
    assert info.value.reason == EndReason.EXIT_POLICY


async def test_ports_outside_the_exit_ports_are_refused() -> None:
    node = _exit(test_network=True)
    node.config.exit_ports = ((80, 80), (443, 443))
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.connect_to_destination("127.0.0.1", 22)
    assert info.value.reason == EndReason.EXIT_POLICY


async def test_test_network_still_refuses_the_relays_own_port() -> None:
    node = _exit(test_network=True)
    node.port = 9001
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.connect_to_destination("127.0.0.9", 9001)
    assert info.value.reason == EndReason.EXIT_POLICY


async def test_unresolvable_name_maps_to_resolve_failed() -> None:
    node = _exit(test_network=False)
    with trio.fail_after(20), pytest.raises(StreamError) as info:
        await node.connect_to_destination("name.invalid", 80)
    assert info.value.reason == EndReason.RESOLVE_FAILED
