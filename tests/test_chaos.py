"""tests/chaos.py's schedule: the same for the same seed, and every kind of fault early in it. The
chaos run itself is not in the suite yet: on seed 2 it still finds a best trial whose model never
reached MLflow (its worker died while the server was away), so @best is not registered."""

from __future__ import annotations

from chaos import FAULTS, schedule

SEED, MINUTES = 2, 1.75  # 1.75 min: room for every kind of fault (one every 6-14 s from 10 s)


def test_the_schedule_comes_from_the_seed_and_has_every_fault() -> None:
    plan = schedule(SEED, MINUTES)
    assert plan == schedule(SEED, MINUTES) != schedule(SEED + 1, MINUTES)
    assert {kind for _, kind in plan[:len(FAULTS)]} == set(FAULTS)
    assert all(0 < t < MINUTES * 60 for t, _ in plan)
