"""One task of a study: some users of one seed, from start to end.

Every simulated user runs the client's own code: ``select_path`` with the
constraints the circuit manager would build (hop count, the stream's port,
the guards ``GuardSet.preferred`` returns), ``GuardSet.after_use`` after
each build, and ``hopchain.reuse.may_carry`` to decide whether the newest
circuit takes a stream.  The loop runs period by period, so every user sees
the same consensus in a period, and the adversary's relays are added to
each consensus before path selection sees it.

Each user has two rngs derived from (seed, user): one for behaviour (the
user model) and one for path selection and guards.  A user's results depend
only on them and the consensus schedule, not on how users are split into
tasks, and users behave the same at every point of a sweep.
"""

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from hopchain.simulations.paths.adversary import (
    Adversary,
    AdversarySpec,
    bandwidth_shares,
    selection_shares,
)
from hopchain.simulations.paths.networks import NetworkSpec, open_schedule, period_count
from hopchain.simulations.paths.synthetic import DAY
from hopchain.simulations.paths.users import MODELS, Visit

from hopchain.directory import Consensus, Descriptor
from hopchain.errors import PathSelectionError
from hopchain.guards import MAX_GUARDS, GuardSet
from hopchain.path import PathConstraints, select_path
from hopchain.reuse import DIRTINESS, is_dirty, may_carry

logger = logging.getLogger(__name__)

PROGRESS_EVERY: Final = 5 * DAY


@dataclass(frozen=True, slots=True)
class StudyParams:
    """Everything that defines a study except the seed (picklable).

    ``guards``: how many of the guard set's guards path selection is offered
    (``MAX_GUARDS``, the client's behaviour; 0 offers none, so every circuit
    draws a fresh guard, as before entry guards).  ``guard_rotation`` False
    freezes the guard set's clock at the start of the run, so no guard ever
    expires.
    """

    network: NetworkSpec = field(default_factory=NetworkSpec)
    adversary: AdversarySpec = field(default_factory=AdversarySpec)
    model: str = "typical"
    users: int = 1000
    days: float = 30.0
    hops: int = 3
    guards: int = MAX_GUARDS
    guard_rotation: bool = True
    dirtiness: float = DIRTINESS


@dataclass(frozen=True, slots=True)
class Task:
    """Users ``[first_user, end_user)`` of ``seed`` at sweep point ``point``."""

    params: StudyParams
    seed: int
    first_user: int
    end_user: int
    point: int = 0


@dataclass(slots=True)
class ChunkResult:
    """What a task measured, per user and in total."""

    point: int
    seed: int
    first_user: int
    first_compromise: list[float | None] = field(default_factory=list)
    streams: list[int] = field(default_factory=list)
    compromised_streams: list[int] = field(default_factory=list)
    circuits: list[int] = field(default_factory=list)
    compromised_circuits: list[int] = field(default_factory=list)
    failed_streams: int = 0
    exit_streams: dict[str, int] = field(default_factory=dict)
    exit_users: dict[str, int] = field(default_factory=dict)
    guard_share: float = 0.0
    exit_share: float = 0.0
    guard_selection_share: float = 0.0
    exit_selection_share: float = 0.0
    relays: int = 0
    periods: int = 0
    seconds: float = field(default=0.0, compare=False)


@dataclass(slots=True)
class _Circuit:
    built_at: float
    exit: Descriptor
    compromised: bool


class _User:
    """One simulated client's state."""

    def __init__(self, seed: int, index: int, params: StudyParams) -> None:
        self.behaviour = random.Random(f"hopchain sim paths {seed} behaviour {index}")
        self.paths = random.Random(f"hopchain sim paths {seed} paths {index}")
        self.model = MODELS[params.model]
        self.params = params
        self.guards = GuardSet()
        self.circuits: list[_Circuit] = []
        self.visits: list[Visit] = []
        self.next_visit = 0
        self.next_day = 0
        self.first_compromise: float | None = None
        self.streams = self.compromised_streams = self.failed_streams = 0
        self.circuits_built = self.circuits_compromised = 0
        self.exit_streams: Counter[str] = Counter()

    def advance(
        self, until: float, consensus: Consensus, members: frozenset[bytes]
    ) -> None:
        """Run every visit before ``until`` on ``consensus``."""
        while True:
            if self.next_visit == len(self.visits):
                if self.next_day * DAY >= until:
                    return
                self.visits = self.model(self.next_day, self.behaviour)
                self.next_day += 1
                self.next_visit = 0
                continue
            t, port, count = self.visits[self.next_visit]
            if t >= until:
                return
            self.next_visit += 1
            self._open(t, port, count, consensus, members)

    def _circuit_for(self, now: float, port: int) -> _Circuit | None:
        """The newest circuit that may carry the stream (the client's rule)."""
        dirtiness = self.params.dirtiness
        circuits = self.circuits
        for i in range(len(circuits) - 1, -1, -1):
            circuit = circuits[i]
            if is_dirty(circuit.built_at, now, dirtiness):
                del circuits[: i + 1]  # built in order: the older ones are too
                return None
            if may_carry(circuit.exit, circuit.built_at, port, now, dirtiness):
                return circuit
        return None

    def _build(
        self, now: float, port: int, consensus: Consensus, members: frozenset[bytes]
    ) -> _Circuit:
        params = self.params
        guard_clock = now if params.guard_rotation else 0.0
        constraints = PathConstraints(
            hops=params.hops,
            port=port,
            guards=self.guards.preferred(guard_clock)[: params.guards],
        )
        path = select_path(consensus, constraints, self.paths)
        if params.hops > 1:
            self.guards = self.guards.after_use(
                path[0].identity, guard_clock, self.paths
            )
        compromised = path[0].identity in members and path[-1].identity in members
        circuit = _Circuit(now, path[-1], compromised)
        self.circuits.append(circuit)
        self.circuits_built += 1
        self.circuits_compromised += compromised
        return circuit

    def _open(
        self,
        now: float,
        port: int,
        count: int,
        consensus: Consensus,
        members: frozenset[bytes],
    ) -> None:
        circuit = self._circuit_for(now, port)
        if circuit is None:
            try:
                circuit = self._build(now, port, consensus, members)
            except PathSelectionError:
                self.failed_streams += count
                return
        self.streams += count
        self.exit_streams[circuit.exit.country or "??"] += count
        if circuit.compromised:
            self.compromised_streams += count
            if self.first_compromise is None:
                self.first_compromise = now


def run_task(task: Task) -> ChunkResult:
    """Simulate the task's users over the whole run.

    Raises:
        ConfigError: the network or adversary cannot be built.
    """
    started = time.perf_counter()
    params = task.params
    if params.model not in MODELS:
        raise ValueError(f"unknown user model {params.model!r}")
    schedule = open_schedule(params.network, task.seed)
    duration = params.days * DAY
    periods = period_count(duration, schedule.period)
    raw = schedule.consensus(0)
    adversary = Adversary(params.adversary, raw)
    users = [_User(task.seed, i, params) for i in range(task.first_user, task.end_user)]
    result = ChunkResult(task.point, task.seed, task.first_user, periods=periods)
    next_report = PROGRESS_EVERY
    for index in range(periods):
        if index:
            raw = schedule.consensus(index)
        consensus, members = adversary.apply(raw)
        if index == 0:
            result.guard_share, result.exit_share = bandwidth_shares(consensus, members)
            shares = selection_shares(consensus, members)
            result.guard_selection_share, result.exit_selection_share = shares
            result.relays = len(consensus.relays)
        until = min((index + 1) * schedule.period, duration)
        for user in users:
            user.advance(until, consensus, members)
        if until >= next_report and until < duration:
            logger.info(
                "seed %d users %d-%d: day %.0f of %g",
                task.seed,
                task.first_user,
                task.end_user - 1,
                until / DAY,
                params.days,
            )
            next_report += PROGRESS_EVERY
    for user in users:
        result.first_compromise.append(user.first_compromise)
        result.streams.append(user.streams)
        result.compromised_streams.append(user.compromised_streams)
        result.circuits.append(user.circuits_built)
        result.compromised_circuits.append(user.circuits_compromised)
        result.failed_streams += user.failed_streams
        for country, streams in user.exit_streams.items():
            result.exit_streams[country] = result.exit_streams.get(country, 0) + streams
            result.exit_users[country] = result.exit_users.get(country, 0) + 1
    result.seconds = time.perf_counter() - started
    return result
