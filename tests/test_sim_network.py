"""``hopchain sim network``: small runs of the real nodes in virtual time.

Each run is a few simulated minutes of a small network; the assertions are
on virtual times and counts, which are deterministic for a seed.
"""

import csv
import json
import statistics
from pathlib import Path

import pytest
from hopchain.simulations.network.params import Fault, NetworkParams, SimResult
from hopchain.simulations.network.world import run

from hopchain.cli import main

SMALL = NetworkParams(relays=6, clients=6, minutes=2, seed=3, workload="web")


def _median_ttfb(result: SimResult) -> float:
    return statistics.median(t.ttfb for t in result.transfers if t.ttfb is not None)


def test_doubling_latency_doubles_time_to_first_byte() -> None:
    base = run(SMALL)
    doubled = run(
        NetworkParams(**{**_fields(SMALL), "latency_scale": 2.0}),
    )
    assert len(base.transfers) >= 20
    assert all(t.ok for t in base.transfers + doubled.transfers)
    ratio = _median_ttfb(doubled) / _median_ttfb(base)
    # The time to first byte is round trips through the circuit (plus a
    # little transmission time that latency does not scale).
    assert 1.7 < ratio < 2.1


def _fields(params: NetworkParams) -> dict[str, object]:
    return {name: getattr(params, name) for name in params.__dataclass_fields__}


def test_killing_relays_raises_failures_then_the_network_recovers() -> None:
    kill_at = 1.5
    params = NetworkParams(
        relays=6,
        clients=6,
        minutes=3.5,
        seed=2,
        workload="web",
        think_time=5.0,
        faults=tuple(Fault("kill", f"r{i}", kill_at) for i in (1, 2)),
    )
    result = run(params)

    def window(start: float, end: float) -> tuple[int, int]:
        ended = [t for t in result.transfers if start <= t.end < end]
        return len(ended), sum(not t.ok for t in ended)

    before, failed_before = window(0, 60 * kill_at)
    _, failed_during = window(60 * kill_at, 60 * kill_at + 60)
    after, failed_after = window(60 * kill_at + 90, 60 * params.minutes)
    assert before > 50
    assert after > 15
    assert failed_before == 0
    # Streams on circuits through the dead relays fail (the client retries a
    # stream once on a new circuit, which hides most of them).
    assert failed_during > failed_before
    # The authority finds the dead relays within its test interval and the
    # clients' next consensus leaves them out: success is back to 100 %.
    assert failed_after == 0
    assert [what for _, what in result.events] == ["kill r1", "kill r2"]
    dead = {
        r.nickname: r.bytes_sent for r in result.relays if r.nickname in ("r1", "r2")
    }
    assert len(dead) == 2


def test_a_vanished_relay_is_noticed_by_timeouts_and_streams_move_on() -> None:
    params = NetworkParams(
        relays=6,
        clients=6,
        minutes=3,
        seed=2,
        workload="web",
        think_time=5.0,
        faults=(Fault("vanish", "r1", 1.5), Fault("vanish", "r2", 1.5)),
    )
    result = run(params)
    before = [t for t in result.transfers if t.end < 90]
    after = [t for t in result.transfers if t.end >= 90]
    assert len(before) > 50
    assert all(t.ok for t in before)
    # Nothing tells the neighbours: downloads in flight through the silent
    # relays stall until the workload's deadline ("timeout").  A new stream
    # that gets no CONNECTED is retried on another circuit, so (with the
    # rare exception of a retry through the other silent relay) none fails
    # with StreamError:TIMEOUT, as all of them did before the retry.
    assert sum(t.error == "timeout" for t in after) >= 1
    assert sum(t.error == "StreamError:TIMEOUT" for t in after) <= 1
    assert sum(t.ok for t in after) > 10
    assert [what for _, what in result.events] == ["vanish r1", "vanish r2"]


def test_same_seed_same_run_other_seed_other_run() -> None:
    first = run(SMALL)
    again = run(SMALL)
    other = run(NetworkParams(**{**_fields(SMALL), "seed": 4}))
    assert first.transfers == again.transfers
    assert first.builds == again.builds
    assert first.relays == again.relays
    assert first.transfers != other.transfers


def test_the_command_writes_csv_json_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    main(
        [
            "sim",
            "network",
            "--relays=5",
            "--clients=4",
            "--minutes=1",
            "--workload=mixed",
            "--bulk-fraction=0.5",
            "--bulk-pause=5",
            "--slow=r0@0.5:4",
            "--seed=9",
            f"--out={out}",
        ]
    )
    captured = capsys.readouterr()
    names = {
        "transfers.csv",
        "builds.csv",
        "relays.csv",
        "summary.json",
        "ttfb.png",
        "download_times.png",
        "build_times.png",
        "failures.png",
        "relay_load.png",
    }
    assert {p.name for p in out.iterdir()} == names
    for name in names:
        assert str(out / name) in captured.out
        assert (out / name).stat().st_size > 0
    assert "minute 0.5: slow r0 x4" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 9
    assert summary["parameters"]["faults"][0]["relay"] == "r0"
    with (out / "transfers.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["downloads"] > 0
    assert {int(r["size_bytes"]) for r in rows} >= {50 * 1024, 1024 * 1024}
    with (out / "relays.csv").open() as f:
        assert [r["relay"] for r in csv.DictReader(f)] == [f"r{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kill=r9@1", "--relays=5"], "no relay named r9"),
        (["--kill=r1"], "RELAY@MINUTE"),
        (["--slow=r1@1:0.5"], "FACTOR >= 1"),
        (["--relays=2"], "at least 3 relays"),
    ],
)
def test_mistakes_get_one_error_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "network", "--no-plots", f"--out={tmp_path}", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
