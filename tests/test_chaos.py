"""A short chaos run in the suite (tests/chaos.py): every kind of fault strikes a real study at
least once, on a fixed seed, and the history read back from the stores must be whole."""

from __future__ import annotations

from pathlib import Path

from chaos import FAULTS, run, schedule

# 1.75 min: room for every kind of fault (one every 6-14 s from 10 s, every kind by 75 s on this
# seed); 7 repeats of 3 activations at 3 epochs keep the study running past them on a CPU up to a
# few times faster than the 2-core Xeon where 4 repeats completed at 140 s (process starts and
# outages take most of it, training little)
SEED, MINUTES, WORKERS, REPEATS, EPOCHS = 2, 1.75, 2, 7, 3


def test_the_schedule_comes_from_the_seed_and_has_every_fault() -> None:
    plan = schedule(SEED, MINUTES)
    assert plan == schedule(SEED, MINUTES) != schedule(SEED + 1, MINUTES)
    assert {kind for _, kind in plan[:len(FAULTS)]} == set(FAULTS)
    assert all(0 < t < MINUTES * 60 for t, _ in plan)


def test_a_study_under_every_kind_of_fault_loses_and_doubles_nothing(tmp_path: Path) -> None:
    said: list[str] = []
    problems, struck = run(tmp_path, SEED, MINUTES, WORKERS, REPEATS, EPOCHS, say=said.append)
    story = "\n".join(said)
    assert set(struck) == set(FAULTS), f"not every fault struck before the study completed:\n{story}"
    assert not problems, "\n".join(["the history is not whole:", *problems, "", story,
                                    f"(processes' output: {tmp_path / 'processes.log'})"])
