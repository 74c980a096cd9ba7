"""The default exit policy refuses private destinations before any packet.

The exit's network is a fake that fails the test if it is ever asked to
connect, and answers names (and reverse lookups) from a table, so a bug here
cannot send a packet anywhere.  The same policy filters what a RESOLVE may
answer and which addresses a RESOLVE_PTR may look up.
"""

import errno
import ipaddress
import logging
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import trio
import trio.testing
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay import dirclient
from hopchain.relay.authority import AuthorityNode
from hopchain.relay.daemon import exit_policy
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.net import Network, TcpNetwork, wall_clock
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.cli import build_parser
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.directory import verify_descriptor
from hopchain.errors import StreamError
from hopchain.exitpolicy import ACCEPT_ALL, default_policy, parse_policy
from hopchain.messages import EndReason

from .conftest import LoopbackOnlyNetwork, seed

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


def _exit(test_network: bool, network: Network | None = None) -> RelayNode:
    """An exit relay, not serving, whose relay port is 9001."""
    config = RelayConfig(
        nickname="exit",
        address="127.0.0.9",
        port=9001,
        exit=True,
        test_network=test_network,
    )
    return RelayNode(
        config,
        IdentityKey(seed("x")),
        OnionKey(seed("y")),
        network or NoConnectNetwork(),
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


class NoResolveNetwork(NoConnectNetwork):
    """Fails the test if asked to resolve anything."""

    async def resolve(self, host: str, port: int) -> list[str]:
        pytest.fail(f"exit resolved {host} for a port its policy refuses")


async def test_ports_the_policy_refuses_are_refused_before_any_lookup() -> None:
    node = _exit(test_network=True, network=NoResolveNetwork())
    node.set_exit_policy(parse_policy("accept *:80, accept *:443, reject *:*"))
    for host in ["127.0.0.1", "name.test"]:
        with trio.fail_after(10), pytest.raises(StreamError) as info:
            await node.connect_to_destination(host, 22)
        assert info.value.reason == EndReason.EXIT_POLICY


class RecordingNetwork(NoConnectNetwork):
    """Records connects and refuses them, without touching any socket."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        self.connects.append((host, port))
        raise OSError(errno.ECONNREFUSED, "refused by the recording network")


async def test_set_exit_policy_takes_effect_for_new_streams() -> None:
    network = RecordingNetwork()
    node = _exit(test_network=True, network=network)
    assert node.exit_policy == ACCEPT_ALL  # a test network's default
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.connect_to_destination("127.0.0.1", 22)
    assert info.value.reason == EndReason.CONNECT_REFUSED  # the policy let it by
    assert network.connects == [("127.0.0.1", 22)]
    assert verify_descriptor(node.descriptor(), wall_clock()).descriptor.exit_ports == (
        (1, 65535),
    )

    node.set_exit_policy(parse_policy("reject *:22, accept 127.0.0.0/8:*"))
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.connect_to_destination("127.0.0.1", 22)
    assert info.value.reason == EndReason.EXIT_POLICY
    with trio.fail_after(10), pytest.raises(StreamError) as info:
        await node.connect_to_destination("127.0.0.1", 80)
    assert info.value.reason == EndReason.CONNECT_REFUSED
    assert network.connects == [("127.0.0.1", 22), ("127.0.0.1", 80)]
    # The descriptor now offers no port in general (a narrow accept only).
    assert (
        verify_descriptor(node.descriptor(), wall_clock()).descriptor.exit_ports == ()
    )


async def test_the_default_outside_test_networks_is_the_reduced_policy() -> None:
    node = _exit(test_network=False)
    assert node.exit_policy == default_policy(test_network=False)
    desc = verify_descriptor(node.descriptor(), wall_clock()).descriptor
    assert desc.allows_exit_to(443)
    assert not desc.allows_exit_to(25)


async def test_test_network_still_refuses_the_relays_own_port() -> None:
    node = _exit(test_network=True)
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
    node = _exit(test_network=False, network=HangingNetwork())
    query = "192.0.2.1" if ptr else "public.test"
    with trio.fail_after(60), pytest.raises(StreamError) as info:
        await node.resolve_for_client(query, ptr=ptr)
    assert info.value.reason == EndReason.TIMEOUT


# --- end to end: SOCKS through a real circuit to an exit outside a test network ------


class FailOnConnectNetwork(TcpNetwork):
    """The exit's network: listens on loopback (its relay port), but fails
    the test on any outbound connect, and resolves only from a table, so
    nothing the exit does can send a packet to a destination."""

    NAMES: ClassVar[dict[str, list[str]]] = {"loopback.test": ["127.0.0.1"]}

    def __init__(self) -> None:
        self.connects: list[str] = []

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        self.connects.append(f"{host}:{port}")
        pytest.fail(f"the exit tried to connect to {host}:{port}")

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in self.NAMES:
            return self.NAMES[host]
        ipaddress.ip_address(host)  # anything else must be a literal
        return [host]

    async def resolve_ptr(self, address: str) -> str:
        raise OSError(-2, "no reverse lookups here")


async def _receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    for _ in range(n):  # at least one byte per round
        if len(data) == n:
            break
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise EOFError("socks port closed early")
        data += chunk
    return data


def _socks_address(host: str) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return bytes([0x03, len(host)]) + host.encode()
    return bytes([0x01 if ip.version == 4 else 0x04]) + ip.packed


async def socks5_reply(socks_port: int, host: str, port: int) -> int:
    """The REP code the client's SOCKS5 port answers a CONNECT with."""
    stream = await trio.open_tcp_stream("127.0.0.1", socks_port)
    async with stream:
        await stream.send_all(b"\x05\x01\x00")
        assert await _receive_exactly(stream, 2) == b"\x05\x00"
        request = b"\x05\x01\x00" + _socks_address(host) + struct.pack(">H", port)
        await stream.send_all(request)
        reply = await _receive_exactly(stream, 2)
    assert reply[0] == 0x05
    return reply[1]


@dataclass
class PolicyNet:
    exit_network: FailOnConnectNetwork
    exit: RelayNode
    socks_port: int


async def _start_policy_net(nursery: trio.Nursery) -> PolicyNet:
    """An authority, a guard and a middle in a test network on loopback, an
    exit that is *not* in a test network (the default reduced policy, so the
    fixed refusals apply) on 127.0.0.9, and a client."""
    network = LoopbackOnlyNetwork()
    authority = AuthorityNode(
        IdentityKey(seed("p-authority")), "127.0.0.1", 0, network, test_network=True
    )
    await nursery.start(authority.serve)
    pinned = AuthorityAddress("127.0.0.1", authority.port, authority.identity.public)
    relays = []
    for i in range(2):
        config = RelayConfig(
            nickname=f"policy{i}",
            address=f"127.0.0.{2 + i}",
            authorities=[pinned],
            test_network=True,
        )
        node = RelayNode(
            config, IdentityKey(seed(f"p-id{i}")), OnionKey(seed(f"p-on{i}")), network
        )
        await nursery.start(node.serve)
        relays.append(node)
    exit_network = FailOnConnectNetwork()
    exit_node = RelayNode(
        RelayConfig(nickname="policyexit", address="127.0.0.9", exit=True),
        IdentityKey(seed("p-exit")),
        OnionKey(seed("p-exit-onion")),
        exit_network,
    )
    await nursery.start(exit_node.serve)
    # The exit's own network may not connect anywhere, so the test publishes
    # its descriptor (the authority then tests that it is reachable).
    await dirclient.publish(network, pinned, exit_node.descriptor())
    for node in relays:
        await node.published.wait()
    client = ClientNode(
        ClientConfig(
            authorities=[pinned], socks_port=0, test_network=True, bootstrap_timeout=30
        ),
        network,
        random.Random(5),
    )
    await nursery.start(client.serve)
    assert network.violations == []
    return PolicyNet(exit_network, exit_node, client.socks_port)


@pytest.fixture
async def policynet(nursery: trio.Nursery) -> PolicyNet:
    with trio.fail_after(60):
        return await _start_policy_net(nursery)


async def test_refused_destinations_get_not_allowed_by_ruleset_and_nothing_is_sent(
    policynet: PolicyNet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hopchain.relay.exit")
    targets = [
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "0.0.0.0",
        "127.0.0.1",
        "loopback.test",  # resolves (at the exit) to 127.0.0.1
    ]
    with trio.fail_after(60):
        replies = {
            host: await socks5_reply(policynet.socks_port, host, 80) for host in targets
        }
    assert replies == dict.fromkeys(targets, 0x02)  # connection not allowed by ruleset
    assert policynet.exit_network.connects == []
    refusals = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("exit_stream_refused")
    ]
    # Each one was refused by the exit itself (not by the client), after a
    # lookup where there was a name, and the log names no destination.
    assert len(refusals) == len(targets)
    assert all(
        "reason=EXIT_POLICY" in line and "host=[scrubbed]" in line for line in refusals
    )


# --- the command line ----------------------------------------------------------------


async def _relay_cli(tmp_path: Path, *extra: str) -> tuple[int, str]:
    """Run ``hopchain relay --exit`` with extra options: (status, stderr)."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "hopchain",
                "relay",
                "--data-dir",
                str(tmp_path / "keys"),
                "--nickname",
                "x",
                "--address",
                "127.0.0.9",
                "--authority",
                f"127.0.0.1:7000={'ab' * 32}",
                "--exit",
                *extra,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stderr.decode()


async def test_a_bad_exit_policy_is_one_clear_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    status, stderr = await _relay_cli(
        tmp_path, "--exit-policy", "accept *:80, accept *:0"
    )
    assert status == 2
    assert stderr.strip() == (
        "hopchain relay: error: --exit-policy: rule 2 'accept *:0': "
        "port 0 is outside 1..65535"
    )
    assert not (tmp_path / "keys").exists()


async def test_a_bad_exit_policy_file_names_the_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.write_text("# web only\naccept *:80\naccept *:443\nreject *:*:*\n")
    status, stderr = await _relay_cli(tmp_path, "--exit-policy-file", str(policy))
    assert status == 2
    assert f"error: {policy}, line 4: rule 3 'reject *:*:*': " in stderr
    assert "Traceback" not in stderr
    status, stderr = await _relay_cli(
        tmp_path, "--exit-policy-file", str(tmp_path / "none")
    )
    assert status == 2
    assert "--exit-policy-file: cannot read it" in stderr


async def test_policy_options_are_exclusive(tmp_path: Path) -> None:
    status, stderr = await _relay_cli(
        tmp_path, "--exit-policy", "accept *:*", "--exit-ports", "80"
    )
    assert status == 2
    assert "not allowed with argument" in stderr


async def test_exit_ports_is_a_policy_shorthand(tmp_path: Path) -> None:
    status, stderr = await _relay_cli(tmp_path, "--exit-ports", "80,44x")
    assert status == 2
    assert "argument --exit-ports: bad port range '44x'" in stderr


async def test_exit_ports_accept_those_ports_and_reject_the_rest() -> None:
    args = build_parser().parse_args(["relay", "--exit-ports", "80,443-444"])
    assert exit_policy(args) == parse_policy(
        "accept *:80, accept *:443-444, reject *:*"
    )
