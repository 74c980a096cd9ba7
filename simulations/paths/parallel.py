"""Running tasks: in this process, across local processes, or on Dask.

A study is split into tasks (sweep point x seed x slice of users) that
each run ``engine.run_task`` from scratch, so any executor runs the same
code and gets the same results: ``LocalExecutor`` (a ``multiprocessing``
pool, or this process for one worker) and ``DaskExecutor`` (a
``distributed.Client``: a remote scheduler, or a ``LocalCluster``).
"""

import importlib
import itertools
import logging
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from hopchain.simulations.paths.engine import ChunkResult, StudyParams, Task, run_task

from hopchain.errors import ConfigError

logger = logging.getLogger(__name__)


def plan(
    points: Sequence[StudyParams], seeds: Sequence[int], workers: int
) -> list[Task]:
    """The tasks of a study: each (point, seed) split into user slices, so
    that every worker has something to do and the task count is a multiple
    of the worker count (no worker idles at the end while one finishes)."""
    runs = len(points) * len(seeds)
    slices = max(1, math.ceil(workers / runs))
    while (runs * slices) % workers and slices < workers:
        slices += 1
    tasks = []
    for index, params in enumerate(points):
        slices = min(params.users, slices)
        bounds = [round(i * params.users / slices) for i in range(slices + 1)]
        for seed in seeds:
            for low, high in itertools.pairwise(bounds):
                tasks.append(Task(params, seed, low, high, index))
    return tasks


class Executor(Protocol):
    """Runs tasks and yields results as they finish."""

    def run(self, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        """Results in any order."""
        ...


def _init_worker(level: int) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(processName)s: %(message)s"
    )


class LocalExecutor:
    """A pool of ``workers`` processes (spawned, so they share no state), or
    this process when ``workers`` is 1."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError("--workers must be at least 1")
        self.workers = workers

    def run(self, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        if self.workers == 1 or len(tasks) == 1:
            for task in tasks:
                yield run_task(task)
            return
        context = multiprocessing.get_context("spawn")
        processes = min(self.workers, len(tasks))
        level = logging.getLogger().getEffectiveLevel()
        with context.Pool(processes, _init_worker, (level,)) as pool:
            yield from pool.imap_unordered(run_task, tasks)


class DaskExecutor:
    """Tasks as Dask futures on a ``distributed.Client``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        distributed = importlib.import_module("distributed")
        futures = self.client.map(run_task, list(tasks), pure=False)
        for future in distributed.as_completed(futures):
            yield future.result()


def connect_dask(
    scheduler: str | None, local_workers: int | None
) -> tuple[Any, Callable[[], None]]:
    """A ``distributed.Client`` for ``scheduler`` (an address) or for a new
    local cluster of ``local_workers`` processes, and a function that closes
    what was opened.

    Raises:
        ConfigError: distributed is not installed, or the scheduler is not
            reachable.
    """
    try:
        distributed = importlib.import_module("distributed")
    except ImportError as exc:
        raise ConfigError(
            "Dask runs need the 'distributed' package: pip install 'hopchain[dask]'"
        ) from exc
    # Dask's own INFO lines (scheduler, nannies) would drown the progress.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        if scheduler is not None:
            client = distributed.Client(scheduler, timeout="30s")
            return client, client.close
        cluster = distributed.LocalCluster(
            n_workers=local_workers,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # loopback, any free port
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler {scheduler}: {exc}"
        ) from exc
    client = distributed.Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close


def execute(tasks: Sequence[Task], executor: Executor) -> list[ChunkResult]:
    """Run every task, reporting progress on stderr, and return the results
    in task order (so output does not depend on which finished first)."""
    started = time.monotonic()
    results = []
    for done, result in enumerate(executor.run(tasks), 1):
        results.append(result)
        logger.info(
            "sim paths: %d/%d tasks done (point %d, seed %d, users from %d), %.0f s",
            done,
            len(tasks),
            result.point,
            result.seed,
            result.first_user,
            time.monotonic() - started,
        )
    order = {(t.point, t.seed, t.first_user): i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r.point, r.seed, r.first_user)])
