"""Predicted ports: which ports get clean circuits built ahead."""

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Descriptor
from hopchain.predicted import WINDOW, PredictedPorts, ports_to_prepare

EXIT = Descriptor(
    nickname="e",
    identity=bytes(32),
    onion_key=bytes(32),
    address="192.0.2.1",
    or_port=9001,
    bandwidth=1,
    exit_ports=((80, 80), (443, 443)),
    family=(),
    country="DE",
    published=0.0,
    test_network=False,
)


def test_ports_seen_in_the_last_hour_most_recent_first() -> None:
    predicted = PredictedPorts()
    predicted.seen(80, 0.0)
    predicted.seen(443, 10.0)
    predicted.seen(22, 20.0)
    predicted.seen(80, 30.0)  # seen again: most recent now
    assert predicted.ports(40.0) == (80, 22, 443)
    assert predicted.ports(10.0 + WINDOW) == (80, 22)  # 443 expired
    assert predicted.ports(30.0 + WINDOW) == ()


def test_the_number_of_ports_is_bounded() -> None:
    predicted = PredictedPorts(max_ports=3)
    for port in range(1, 10):
        predicted.seen(port, float(port))
    assert predicted.ports(10.0) == (9, 8, 7)


def test_ports_no_clean_circuit_serves() -> None:
    other = dataclasses.replace(EXIT, exit_ports=((22, 22),))
    assert ports_to_prepare([443, 22, 80], [], 4) == [443, 22, 80]
    assert ports_to_prepare([443, 22, 80], [EXIT], 4) == [22]
    assert ports_to_prepare([443, 22, 80], [EXIT, other], 4) == []
    assert ports_to_prepare([443, 22, 80], [], 2) == [443, 22]
    assert ports_to_prepare([22], [EXIT, EXIT], 2) == []  # no room left


@given(
    st.lists(st.tuples(st.integers(1, 65535), st.floats(0, 2 * WINDOW)), max_size=50),
    st.floats(0, 3 * WINDOW),
)
def test_prop_ports_are_recent_unique_and_bounded(
    events: list[tuple[int, float]], now: float
) -> None:
    predicted = PredictedPorts(max_ports=8)
    last: dict[int, float] = {}
    for port, when in sorted(events, key=lambda e: e[1]):
        predicted.seen(port, when)
        last[port] = when
    ports = predicted.ports(now)
    assert len(ports) == len(set(ports)) <= 8
    assert all(now - last[p] < WINDOW for p in ports)
    assert [last[p] for p in ports] == sorted((last[p] for p in ports), reverse=True)
