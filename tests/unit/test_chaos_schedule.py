"""The chaos schedule is a pure function of its seed, and every step it plans is one the lab can play."""

from __future__ import annotations

from tests.chaos.schedule import DISABLE, ENABLE, FAULTS, MODE_CHANGE, ROTATE, make_schedule


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    assert make_schedule(7, 12) == make_schedule(7, 12)
    assert make_schedule(7, 12) != make_schedule(8, 12)


def test_steps_follow_from_the_state_before_them() -> None:
    for seed in range(200):
        enabled, private, version = False, False, 0
        for step in make_schedule(seed, 10, replicas=3):
            t = step.target
            if step.action == ENABLE:
                assert not enabled and t.enabled and step.arm_writes == 1
            elif step.action == DISABLE:
                assert enabled and not t.enabled and step.arm_writes == 1
            elif step.action == ROTATE:
                assert enabled and not private and not t.private and t.version == (version + 1) % 3
                assert step.arm_writes == 1
            else:
                assert step.action == MODE_CHANGE and enabled and t.private != private and step.arm_writes == 2
            assert 1 <= len(step.faults) <= 3 and all(f.kind in FAULTS for f in step.faults)
            assert all(0 <= f.replica < 3 for f in step.faults)
            enabled, private, version = t.enabled, t.private, t.version


def test_every_fault_kind_is_drawn() -> None:
    seen = {f.kind for seed in range(20) for step in make_schedule(seed, 10) for f in step.faults}
    assert seen == set(FAULTS)
