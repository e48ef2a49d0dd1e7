"""Load shapes give the right phases; the locustfile imports and declares its users and shape."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from load.runner import CLOSED_CLASSES, OPEN_CLASSES, LoadPlan, locust_command
from load.shapes import Phase, level, phases
from load.stats import LocustStats
from tests.support.processes import REPO_ROOT


def test_steady() -> None:
    assert phases("steady", 60) == [Phase(0, 60, 1.0)]
    assert level("steady", 59.9, 60) == 1.0
    assert level("steady", 60, 60) is None


def test_step_climbs_in_four_steps() -> None:
    got = phases("step", 40)
    assert [(p.start, p.end, p.level) for p in got] == [
        (0, 10, 0.25),
        (10, 20, 0.5),
        (20, 30, 0.75),
        (30, 40, 1.0),
    ]
    assert level("step", 15, 40) == 0.5


def test_spike_goes_up_and_back_down() -> None:
    levels = [level("spike", t, 100) for t in (0, 39, 40, 59, 60, 99)]
    assert levels == [0.3, 0.3, 1.0, 1.0, 0.3, 0.3]


def test_unknown_shape() -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        phases("wave", 10)  # type: ignore[arg-type]


def test_locustfile_declares_region_users_and_one_shape() -> None:
    code = (
        "import load.locustfile as f; from locust import LoadTestShape;"
        "print(sorted((n, c.region, c.weight) for n, c in vars(f).items()"
        " if isinstance(c, type) and hasattr(c, 'region') and not c.abstract));"
        "print([n for n, c in vars(f).items() if isinstance(c, type)"
        " and issubclass(c, LoadTestShape) and c is not LoadTestShape])"
    )
    # A subprocess: gevent monkey-patches whatever imports locust.
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == str(
        [
            ("ArrivalsEU", "eu", 3),
            ("ArrivalsSA", "sa", 2),
            ("ArrivalsUS", "us", 5),
            ("ShopperEU", "eu", 3),
            ("ShopperSA", "sa", 2),
            ("ShopperUS", "us", 5),
        ]
    )
    assert out[1] == "['ShopperShape']"
    assert importlib.util.find_spec("locust") is not None


def test_command_picks_open_or_closed_users(tmp_path: object) -> None:
    from pathlib import Path

    closed = locust_command(LoadPlan(out_dir=Path("/x"), pops={"us": "http://a"}))
    assert closed[-3:] == list(CLOSED_CLASSES)
    assert "--tb-pops" in closed
    assert "us=http://a" in closed
    opened = locust_command(LoadPlan(out_dir=Path("/x"), rate=5))
    assert opened[-3:] == list(OPEN_CLASSES)


HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size\n"
)
HISTORY = (
    HEADER
    + """\
100,2,,Aggregated,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0,0,0,0
101,2,POST,checkout,1.0,0.0,10,10,10,10,10,10,10,40,40,40,40,10,0,10,10,1,40,5
101,2,,Aggregated,5.0,0.0,5,5,5,5,5,5,5,40,40,40,40,50,0,5,5,1,40,5
102,2,POST,checkout,1.0,1.0,10,10,10,10,10,10,10,90,90,90,90,20,5,10,10,1,90,5
102,2,,Aggregated,5.0,1.0,5,5,5,5,5,5,5,90,90,90,90,100,5,5,5,1,90,5
103,2,,Aggregated,5.0,1.0,5,5,5,5,5,5,5,60,60,60,60,150,15,5,5,1,90,5
"""
)


def test_stats_history_spans(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "x_stats_history.csv"
    half, rest = HISTORY[:400], HISTORY[400:]
    path.write_text(half)
    stats = LocustStats(path)
    stats.refresh()
    with path.open("a") as fh:
        fh.write(rest)
    stats.refresh()
    assert len(stats.rows) == 6
    assert stats.counts() == (150, 15)
    assert stats.error_ratio(since=101, until=102) == 0.1  # 5 of 50
    assert stats.error_ratio("checkout") == 0.25
    assert stats.percentile("99%", since=101, until=103) == 90
    assert stats.current_percentile("99%") == 60
    assert stats.error_ratio(since=103) is None
