"""``hopchain sim paths``: the model against analytic values, the wiring to
the client's code, determinism, outputs and parallel execution."""

import base64
import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import hopchain.client.building as client_building
import hopchain.client.reuse as client_reuse
import pytest
from hopchain.simulations.paths import engine
from hopchain.simulations.paths.adversary import AdversarySpec
from hopchain.simulations.paths.engine import StudyParams, Task, run_task
from hopchain.simulations.paths.networks import NetworkSpec, open_schedule
from hopchain.simulations.paths.parallel import LocalExecutor, execute, plan
from hopchain.simulations.paths.report import FILES, SEED_COLUMNS
from hopchain.simulations.paths.results import merge
from hopchain.simulations.paths.stats import median_ci
from hopchain.simulations.paths.study import Sweep, run_study
from hopchain.simulations.paths.synthetic import SyntheticSchedule, generate_relays

import hopchain.path
import hopchain.pathpool
import hopchain.reuse
from hopchain.cli import main
from hopchain.crypto.keys import IdentityKey
from hopchain.directory import (
    Consensus,
    Descriptor,
    Listing,
    SignedDescriptor,
    build_consensus,
    consensus_signing_message,
    sign_consensus,
    sign_descriptor,
)
from hopchain.errors import ConfigError
from hopchain.guards import GuardSet

PNG = b"\x89PNG\r\n\x1a\n"


def tor_consensus(guards: int, middles: int, exits: int) -> str:
    """A Tor-format consensus: Guard-only, plain and Exit-only relays with
    random bandwidths, each in its own /16, exits accepting every port."""
    rng = random.Random(5)
    lines = [
        "network-status-version 3",
        "valid-after 2024-05-01 12:00:00",
        "fresh-until 2024-05-01 13:00:00",
        "valid-until 2024-05-01 15:00:00",
    ]
    kinds = [("Guard", "reject")] * guards + [("", "reject")] * middles
    kinds += [("Exit", "accept")] * exits
    for n, (flag, policy) in enumerate(kinds):
        ident = hashlib.sha1(f"relay {n}".encode()).digest()
        name = base64.b64encode(ident).decode().rstrip("=")
        address = f"{20 + n // 250}.{n % 250}.0.1"
        lines += [
            f"r relay{n} {name} 2024-05-01 00:00:00 {address} 9001 0",
            f"s Fast Running Stable Valid {flag}".rstrip(),
            f"w Bandwidth={rng.randrange(100, 5000)}",
            f"p {policy} 1-65535",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tor_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tor") / "consensus"
    path.write_text(tor_consensus(guards=60, middles=40, exits=40))
    return str(path)


def fixed_params(tor_file: str, **changes: object) -> StudyParams:
    base = StudyParams(
        network=NetworkSpec(kind="tor", files=(tor_file,)),
        adversary=AdversarySpec(guard_fraction=0.3, exit_fraction=0.3),
        users=300,
        days=1.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_fresh_guard_per_circuit_compromise_rate_is_f_times_g(tor_file: str) -> None:
    # One circuit per fresh guard sample: circuits are independent draws.
    f, g = 0.3, 0.2
    params = fixed_params(
        tor_file,
        guards=0,
        adversary=AdversarySpec(guard_fraction=f, exit_fraction=g),
    )
    result = run_task(Task(params, 11, 0, params.users))
    assert result.guard_share == pytest.approx(f, abs=1e-6)
    assert result.exit_share == pytest.approx(g, abs=1e-6)
    # The analytic rate is the product of the adversary's shares of guard
    # and exit *selection* weight (bandwidth times Tor's position weights).
    expected = result.guard_selection_share * result.exit_selection_share
    circuits = sum(result.circuits)
    rate = sum(result.compromised_circuits) / circuits
    error = math.sqrt(expected * (1 - expected) / circuits)
    assert circuits > 2000
    assert abs(rate - expected) < 4 * error, (rate, expected, error)


def test_without_rotation_compromise_rate_is_f_times_g(tor_file: str) -> None:
    # Persistent guards, never rotated: each user's circuits share a guard,
    # so the error is that of a ratio over users (cluster-robust).
    f, g = 0.25, 0.3
    params = fixed_params(
        tor_file,
        users=600,
        guard_rotation=False,
        adversary=AdversarySpec(guard_fraction=f, exit_fraction=g),
    )
    result = run_task(Task(params, 12, 0, params.users))
    n, c = result.circuits, result.compromised_circuits
    expected = result.guard_selection_share * result.exit_selection_share
    rate = sum(c) / sum(n)
    residuals = sum((ci - rate * ni) ** 2 for ci, ni in zip(c, n, strict=True))
    error = math.sqrt(residuals) / sum(n)
    assert abs(rate - expected) < 4 * error, (rate, expected, error)
    # Persistent guards: a user's circuits are all or mostly compromised-
    # capable or not; most users never had an adversary guard.
    never = sum(1 for ci in c if ci == 0) / len(c)
    assert never > 1 - f - 0.1


def test_a_change_in_path_selection_changes_the_results(tor_file: str) -> None:
    params = fixed_params(tor_file, users=100)
    kept = merge([run_task(Task(params, 3, 0, 100))], params.days)
    fresh_params = dataclasses.replace(params, guards=0)
    fresh = merge([run_task(Task(fresh_params, 3, 0, 100))], params.days)
    assert kept.streams == fresh.streams  # same users, same behaviour
    # Without entry guards almost every user meets the adversary in a day.
    assert fresh.scalar("users_compromised") > kept.scalar("users_compromised") + 0.2


def test_the_simulation_runs_the_clients_own_path_selection_and_guards(
    tor_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The very objects the client imports are the ones the engine calls.
    assert engine.select_path is client_building.select_path
    assert engine.is_dirty is client_reuse.is_dirty
    assert engine.GuardSet is client_building.GuardSet
    # may_carry is the client's two reuse rules, is_dirty and exit_accepts.
    assert client_reuse.exit_accepts is hopchain.reuse.exit_accepts
    params = fixed_params(tor_file, users=20)
    baseline = run_task(Task(params, 4, 0, 20))
    calls: list[int] = []
    original = hopchain.path.prepared

    def counting(consensus: Consensus) -> hopchain.pathpool.Prepared:
        calls.append(1)
        return original(consensus)

    monkeypatch.setattr(hopchain.path, "prepared", counting)
    assert run_task(Task(params, 4, 0, 20)) == baseline
    assert len(calls) == sum(baseline.circuits)
    # A guard set that never offers its guards is a different client.
    monkeypatch.setattr(GuardSet, "preferred", lambda self, now: ())
    assert run_task(Task(params, 4, 0, 20)).compromised_circuits != (
        baseline.compromised_circuits
    )


def test_results_do_not_depend_on_how_users_are_split(tor_file: str) -> None:
    params = fixed_params(tor_file, users=30)
    whole = merge([run_task(Task(params, 9, 0, 30))], params.days)
    parts = merge(
        [run_task(Task(params, 9, 0, 12)), run_task(Task(params, 9, 12, 30))],
        params.days,
    )
    assert whole == parts


def test_synthetic_network_looks_like_tor() -> None:
    relays = generate_relays(2000, seed=1)
    consensus = SyntheticSchedule(relays, 3600.0, seed=1).consensus(0)
    flags = [r.flags for r in consensus.relays]
    share = {f: sum(f in x for x in flags) / len(flags) for f in ("Guard", "Exit")}
    assert 0.3 < share["Guard"] < 0.6
    assert 0.1 < share["Exit"] < 0.3
    bandwidths = sorted(r.descriptor.bandwidth for r in consensus.relays)
    top = sum(bandwidths[-len(bandwidths) // 10 :]) / sum(bandwidths)
    assert top > 0.4  # heavy tail: the top 10 % carry much of the bandwidth
    assert sum(bool(r.descriptor.family) for r in consensus.relays) > 500
    countries = {r.descriptor.country for r in consensus.relays}
    assert {"DE", "US", "FR", "NL"} <= countries
    assert generate_relays(2000, seed=1) == relays
    assert generate_relays(2000, seed=2) != relays


def test_synthetic_churn_follows_the_flag_rules() -> None:
    schedule = SyntheticSchedule(generate_relays(500, seed=3), 3600.0, seed=3)
    consensuses = [schedule.consensus(i) for i in range(48)]
    running = [sum("Running" in r.flags for r in c.relays) for c in consensuses]
    assert len(set(running)) > 1  # relays go down and come back
    for c in consensuses:
        for r in c.relays:
            if "Guard" in r.flags:
                assert {"Running", "Stable", "Fast"} <= r.flags
    with pytest.raises(ValueError, match="in order"):
        schedule.consensus(100)


def test_hopchain_cached_consensus_is_loaded_and_verified(tmp_path: Path) -> None:
    authority = IdentityKey(bytes(range(32)))
    entries = []
    for n in range(6):
        key = IdentityKey(hashlib.blake2b(bytes([n]), digest_size=32).digest())
        descriptor = Descriptor(
            nickname=f"relay{n}",
            identity=key.public,
            onion_key=bytes(32),
            address=f"{30 + n}.0.0.1",
            or_port=9001,
            bandwidth=1000 * (n + 1),
            exit_ports=((1, 65535),) if n >= 4 else (),
            family=(),
            country="SE",
            published=100.0,
            test_network=False,
        )
        flags = {"Running", "Valid", "Exit" if n >= 4 else "Guard"}
        entries.append(
            Listing(
                SignedDescriptor(descriptor, sign_descriptor(descriptor, key.sign)),
                frozenset(flags),
                "SE",
                False,
                descriptor.bandwidth,
            )
        )
    body = build_consensus(entries, 200.0, 3800.0, 10000.0)
    signature = authority.sign(consensus_signing_message(body))
    path = tmp_path / "cached-consensus"
    path.write_bytes(sign_consensus(body, [(authority.public, signature)]))
    spec = NetworkSpec(kind="hopchain", files=(str(path),))
    consensus = open_schedule(spec, 0).consensus(5)
    assert [r.descriptor.nickname for r in consensus.relays] == [
        f"relay{n}" for n in range(6)
    ]
    params = StudyParams(network=spec, users=5, days=0.5)
    assert sum(run_task(Task(params, 1, 0, 5)).circuits) > 0
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ConfigError, match="not a hopchain consensus"):
        open_schedule(spec, 0)


def test_median_ci_order_statistics() -> None:
    five = median_ci([5, 1, 4, 2, 3])
    assert (five.median, five.low, five.high) == (3, 1, 5)
    assert five.coverage == pytest.approx(1 - 2 / 32)
    twenty = median_ci(list(range(20)))
    assert twenty.coverage >= 0.95
    assert (twenty.low, twenty.high) == (5, 14)


def read_csv(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def study(
    out: Path, tor_file: str, workers: int, **changes: object
) -> Callable[[], list[Path]]:
    params = fixed_params(tor_file, users=40, **changes)
    return lambda: run_study(
        params, [1, 2, 3], out, LocalExecutor(workers), workers=workers
    )


def test_outputs_schema_plots_and_determinism(tmp_path: Path, tor_file: str) -> None:
    written = study(tmp_path / "a", tor_file, workers=1)()
    names = {p.name for p in written}
    for key in ("per_seed", "over_time", "first_compromise", "exit_countries"):
        assert FILES[key] in names
    per_seed = read_csv(tmp_path / "a" / FILES["per_seed"])
    assert tuple(per_seed[0]) == SEED_COLUMNS
    assert [row[0] for row in per_seed[1:]] == ["1", "2", "3"]
    over_time = read_csv(tmp_path / "a" / FILES["over_time"])
    assert over_time[0] == [
        "day",
        "median",
        "ci_low",
        "ci_high",
        "seed_1",
        "seed_2",
        "seed_3",
    ]
    assert len(over_time) == 1 + 25  # hourly points over one day
    values = [float(v) for v in over_time[-1][1:]]
    assert values[1] <= values[0] <= values[2]
    document = json.loads((tmp_path / "a" / FILES["summary"]).read_text())
    assert document["seeds"] == [1, 2, 3]
    assert document["parameters"]["users"] == 40
    assert document["parameters"]["adversary"]["guard_fraction"] == 0.3
    assert set(document["summary"]["scalars"]) >= {
        "users_compromised",
        "stream_fraction",
        "median_days_to_first_compromise",
    }
    for key in ("plot_over_time", "plot_first_compromise", "plot_exit_countries"):
        png = (tmp_path / "a" / FILES[key]).read_bytes()
        assert png.startswith(PNG)
        assert len(png) > 10_000
    # Same seeds, other process layout: the same bytes.
    study(tmp_path / "b", tor_file, workers=2)()
    for key in (
        "per_seed",
        "over_time",
        "first_compromise",
        "exit_countries",
        "summary",
    ):
        a = (tmp_path / "a" / FILES[key]).read_bytes()
        assert a == (tmp_path / "b" / FILES[key]).read_bytes(), key


def test_sweep_across_processes_gives_one_csv_and_one_plot(
    tmp_path: Path, tor_file: str
) -> None:
    params = fixed_params(tor_file, users=30)
    sweep = Sweep.parse("adversary-bandwidth=0.05,0.1,0.2")
    written = run_study(
        params, [1, 2], tmp_path, LocalExecutor(2), workers=2, sweep=sweep
    )
    assert {p.name for p in written} == {
        FILES["sweep"],
        FILES["sweep_summary"],
        FILES["plot_sweep"],
    }
    rows = read_csv(tmp_path / FILES["sweep"])
    assert rows[0][:3] == ["parameter", "value", "seed"]
    assert [(r[1], r[2]) for r in rows[1:]] == [
        (v, s) for v in ("0.05", "0.1", "0.2") for s in ("1", "2")
    ]
    shares = [float(r[rows[0].index("adversary_guard_share")]) for r in rows[1:]]
    assert shares == pytest.approx([0.05, 0.05, 0.1, 0.1, 0.2, 0.2], abs=1e-6)
    summary = json.loads((tmp_path / FILES["sweep_summary"]).read_text())
    compromised = [
        p["scalars"]["users_compromised"]["median"] for p in summary["sweep"]["points"]
    ]
    assert compromised == sorted(compromised)
    assert compromised[0] < compromised[-1]
    assert (tmp_path / FILES["plot_sweep"]).read_bytes().startswith(PNG)


def test_sweep_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        Sweep.parse("colour=red")
    with pytest.raises(ConfigError, match="guards must be"):
        Sweep.parse("guards=9").apply(StudyParams(), "9")


def test_dask_runs_the_same_tasks(tor_file: str) -> None:
    distributed = pytest.importorskip("distributed")
    from hopchain.simulations.paths.parallel import DaskExecutor

    params = fixed_params(tor_file, users=20)
    tasks = plan([params], [1, 2], workers=2)
    local = execute(tasks, LocalExecutor(1))
    with (
        distributed.LocalCluster(
            processes=False,
            n_workers=1,
            threads_per_worker=2,
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = execute(tasks, DaskExecutor(client))
    assert local == remote


def test_cli_prints_where_the_files_went(
    tmp_path: Path, tor_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "sim",
            "paths",
            "--network",
            "tor",
            "--consensus",
            tor_file,
            "--users",
            "10",
            "--days",
            "0.5",
            "--seeds",
            "2",
            "--workers",
            "1",
            "--no-plots",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "wrote:" in out
    assert str(tmp_path / FILES["summary"]) in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--network", "tor"], "needs --consensus"),
        (["--network", "tor", "--consensus", "/nonexistent/x"], "cannot read"),
        (["--guards", "7"], "guards must be"),
        (["--sweep", "speed=1"], "unknown parameter"),
        (["--adversary-countries", ","], "two-letter country codes"),
        (["--adversary-countries", "de,usa"], "two-letter code"),
        # A small study, so that accepting the codes would fail fast.
        (
            [
                *("--relays", "30", "--users", "1", "--days", "0.1"),
                *("--seeds", "1", "--workers", "1"),
                *("--adversary-countries", "de,\u00e4\u00f6"),
            ],
            "two-letter code",
        ),
    ],
)
def test_cli_mistakes_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "paths", "--no-plots", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
