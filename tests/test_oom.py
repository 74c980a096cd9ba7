"""The queued-cell budget and the out-of-memory choice (hopchain/oom.py)."""

from hypothesis import given
from hypothesis import strategies as st

from hopchain.oom import QueueBudget, select_victims


def test_budget_over_and_target() -> None:
    budget = QueueBudget(1000)
    budget.add(1000)
    assert not budget.over
    budget.add(1)
    assert budget.over
    assert budget.target == 900
    budget.remove(500)
    budget.note_peak()
    assert budget.peak == 501
    assert QueueBudget(0).target == 0
    unlimited = QueueBudget(0)
    unlimited.add(10**12)
    assert not unlimited.over


def test_the_circuits_holding_the_most_go_first() -> None:
    queued = {"a": 100, "b": 500, "c": 300, "d": 0}
    assert select_victims(queued, 900, 900) == []
    assert select_victims(queued, 900, 850) == ["b"]
    assert select_victims(queued, 900, 350) == ["b", "c"]
    assert select_victims(queued, 900, 0) == ["b", "c", "a"]  # never "d"


def test_bytes_of_no_circuit_count_in_the_total() -> None:
    assert select_victims({"a": 10, "b": 20}, 1000, 500) == ["b", "a"]


@given(
    st.dictionaries(st.integers(0, 50), st.integers(0, 10_000), max_size=30),
    st.integers(0, 10_000),
    st.integers(0, 300_000),
)
def test_victims_are_the_largest_and_as_few_as_needed(
    queued: dict[int, int], extra: int, target: int
) -> None:
    total = sum(queued.values()) + extra
    victims = select_victims(queued, total, target)
    assert len(set(victims)) == len(victims)
    sizes = [queued[v] for v in victims]
    assert sizes == sorted(sizes, reverse=True)
    assert all(size > 0 for size in sizes)
    others = [size for key, size in queued.items() if key not in victims]
    if victims:
        assert min(sizes) >= max(others, default=0)
        # without the last victim the target would not have been reached
        assert total - sum(sizes[:-1]) > target
    left = total - sum(sizes)
    assert left <= target or all(size == 0 for size in others)
