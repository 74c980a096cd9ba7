"""``PathIndex`` draws: exactly those of a draw over the filtered list of
compatible relays (what ``select_path`` did before the index) when few
relays conflict, and always a compatible relay."""

import random

from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Descriptor
from hopchain.path import EXACT_CONFLICTS, _conflicts, _Pool


def descriptor(
    n: int, bandwidth: int, subnet: int, family: tuple[int, ...]
) -> Descriptor:
    return Descriptor(
        nickname=f"r{n}",
        identity=n.to_bytes(32, "big"),
        onion_key=bytes(32),
        address=f"10.{subnet}.{n // 250}.{n % 250 + 1}",
        or_port=9001,
        bandwidth=bandwidth,
        exit_ports=(),
        family=tuple(f.to_bytes(32, "big") for f in family if f != n),
        country="",
        published=0.0,
        test_network=False,
    )


@st.composite
def pools(draw: st.DrawFn) -> list[Descriptor]:
    count = draw(st.integers(2, 120))
    return [
        descriptor(
            n,
            draw(st.integers(0, 10_000)),
            draw(st.integers(0, draw(st.sampled_from([1, 30])))),
            tuple(draw(st.lists(st.integers(0, count - 1), max_size=3))),
        )
        for n in range(count)
    ]


@given(
    relays=pools(),
    chosen=st.lists(st.integers(0, 119), min_size=1, max_size=3),
    same_subnet_ok=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_draw_compatible_picks_what_a_filtered_draw_picks(
    relays: list[Descriptor], chosen: list[int], same_subnet_ok: bool, seed: int
) -> None:
    taken = [relays[i % len(relays)] for i in chosen]
    free = [
        d for d in relays if not any(_conflicts(d, c, same_subnet_ok) for c in taken)
    ]
    pool = _Pool(relays)
    pick = pool.draw_compatible(taken, same_subnet_ok, random.Random(seed))
    if not free:
        assert pick is None
        return
    assert pick in free
    if pool._conflict_bound(taken, same_subnet_ok) <= EXACT_CONFLICTS:
        weights = [max(1, d.bandwidth) for d in free]
        expected = random.Random(seed).choices(free, weights=weights, k=1)[0]
        assert pick == expected
