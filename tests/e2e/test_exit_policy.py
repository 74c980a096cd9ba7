"""The default exit policy refuses private destinations before any packet.

The exit's network is a fake that fails the test if it is ever asked to
connect, and answers names (and reverse lookups) from a table, so a bug here
cannot send a packet anywhere.  The same policy filters what a RESOLVE may
answer and which addresses a RESOLVE_PTR may look up.
"""

import pytest
import trio
import trio.testing
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

    async def resolve_ptr(self, address: str) -> str:
        if address in PTR_NAMES:
            return PTR_NAMES[address]
        raise OSError(-2, "Name or service not known")


NAMES = {
    "localhost": ["::1", "127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["10.0.0.1", "::ffff:192.168.0.1"],
    "public.test": ["192.0.2.1", "2001:db8::1"],
    "half.test": ["10.0.0.1", "192.0.2.7", "127.0.0.9"],
}
# Every private address has a name here, so a PTR lookup the policy should
# have refused would come back with a name and fail its test.
PTR_NAMES = {
    "192.0.2.1": "public.test",
    "127.0.0.1": "localhost",
    "127.0.0.9": "exit.test",
    "10.0.0.1": "router.internal",
    "::1": "localhost",
    "fe80::1": "link.internal",
    "::ffff:192.168.0.1": "nas.internal",
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


# --- RESOLVE and RESOLVE_PTR -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "answers"),
    [
        ("public.test", ["192.0.2.1", "2001:db8::1"]),
        ("half.test", ["192.0.2.7"]),  # private and own addresses dropped
    ],
)
async def test_resolve_answers_only_what_the_policy_allows(
    query: str, answers: list[str]
) -> None:
    node = _exit(test_network=False)
    with trio.fail_after(10):
        assert await node.resolve_for_client(query, ptr=False) == answers


@pytest.mark.parametrize(
    "query", ["localhost", "metadata.test", "mixed.test", "10.0.0.1", "127.0.0.9"]
)
async def test_resolve_refuses_names_with_only_private_answers(query: str) -> None:
    node = _exit(test_network=False)
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.resolve_for_client(query, ptr=False)
    assert info.value.reason == EndReason.EXIT_POLICY


async def test_resolve_in_a_test_network_answers_private_addresses() -> None:
    node = _exit(test_network=True)
    with trio.fail_after(10):
        assert await node.resolve_for_client("localhost", ptr=False) == [
            "::1",
            "127.0.0.1",
        ]
        assert await node.resolve_for_client("127.0.0.1", ptr=True) == ["localhost"]


async def test_resolve_of_an_unresolvable_name_fails() -> None:
    node = _exit(test_network=True)
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.resolve_for_client("name.invalid", ptr=False)
    assert info.value.reason == EndReason.RESOLVE_FAILED


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.0.0.9", "10.0.0.1", "::1", "fe80::1", "::ffff:192.168.0.1"],
)
async def test_ptr_of_private_addresses_is_refused_before_any_lookup(
    address: str,
) -> None:
    node = _exit(test_network=False)
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.resolve_for_client(address, ptr=True)
    assert info.value.reason == EndReason.EXIT_POLICY


async def test_ptr_of_a_public_address() -> None:
    node = _exit(test_network=False)
    with trio.fail_after(10):
        assert await node.resolve_for_client("192.0.2.1", ptr=True) == ["public.test"]
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.resolve_for_client("192.0.2.2", ptr=True)  # no name
    assert info.value.reason == EndReason.RESOLVE_FAILED


class HangingNetwork(NoConnectNetwork):
    """A resolver that never answers."""

    async def resolve(self, host: str, port: int) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def resolve_ptr(self, address: str) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("ptr", [False, True])
async def test_resolve_times_out(
    autojump_clock: trio.testing.MockClock, ptr: bool
) -> None:
    node = _exit(test_network=False)
    node.network = HangingNetwork()
    query = "192.0.2.1" if ptr else "public.test"
    with trio.fail_after(60), pytest.raises(StreamError) as info:
        await node.resolve_for_client(query, ptr=ptr)
    assert info.value.reason == EndReason.TIMEOUT
