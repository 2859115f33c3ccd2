"""The chaos suite's schedule: a pure function of a seed, so every failure can be replayed.

A schedule is a list of steps. Each step changes the policy (rotate to the next key version, switch
the vault mode, disable or enable KMS) and carries the faults to inject while the operator carries it
out, each at a delay after the change is applied. Nothing here touches a lab: ``tests/chaos/test_chaos.py``
plays the schedule, and ``tests/unit/test_chaos_schedule.py`` checks its shape.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ROTATE = "rotate"
MODE_CHANGE = "mode-change"
DISABLE = "disable"
ENABLE = "enable"

# Faults, by kind. Each is something the real system does to an operator in the middle of a change.
KILL_OPERATOR = "kill-operator"  # kill -9 of the acting operator process, then a restart
REPLICA_RESTART = "replica-restart"  # one kube-apiserver replica restarts (node drain, OOM)
LAGGING_ROLL = "lagging-roll"  # AKS finishes the ARM operation before the last replica reloaded
LOST_ARM_RESPONSE = "lost-arm-response"  # the PUT commits but its response never arrives
ARM_FAILED_AFTER_APPLY = "arm-failed-after-apply"  # the key is applied, the operation ends Failed
KEYVAULT_5XX = "keyvault-5xx"  # Key Vault answers 503 for a while (the KMS plugin and the operator see it)
ARM_429_STORM = "arm-429-storm"  # ARM throttles the cluster's reads and writes
SECOND_OPERATOR = "second-operator"  # a second operator replica runs during the step

FAULTS = (KILL_OPERATOR, REPLICA_RESTART, LAGGING_ROLL, LOST_ARM_RESPONSE, ARM_FAILED_AFTER_APPLY,
          KEYVAULT_5XX, ARM_429_STORM, SECOND_OPERATOR)


@dataclass(frozen=True)
class Fault:
    kind: str
    delay: float  # seconds after the step's change is applied
    replica: int = 0  # for replica restarts
    seconds: float = 0.0  # how long a lag or an outage lasts

    def __str__(self) -> str:
        extra = f" replica={self.replica}" if self.kind == REPLICA_RESTART else ""
        extra += f" for {self.seconds:g}s" if self.seconds else ""
        return f"{self.kind}@{self.delay:g}s{extra}"


@dataclass(frozen=True)
class KmsTarget:
    """What the policy asks for after a step."""

    enabled: bool
    private: bool = False
    version: int = 0  # index into the lab's key versions (public vault); the private vault has one

    def describe(self) -> str:
        if not self.enabled:
            return "disabled"
        return "private V1" if self.private else f"public V{self.version + 1}"


@dataclass(frozen=True)
class Step:
    action: str
    target: KmsTarget
    arm_writes: int  # the writes the plan needs: at most this many may be accepted
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        faults = ", ".join(str(f) for f in self.faults) or "no faults"
        return f"{self.action} -> {self.target.describe()} [{faults}]"


def _next_action(rng: random.Random, state: KmsTarget) -> tuple[str, KmsTarget, int]:
    if not state.enabled:
        return ENABLE, KmsTarget(True, private=False, version=rng.randrange(3)), 1
    choice = rng.choices((ROTATE, MODE_CHANGE, DISABLE), weights=(5, 2, 1))[0]
    if choice == ROTATE and not state.private:
        return ROTATE, KmsTarget(True, False, (state.version + 1) % 3), 1
    if choice in (ROTATE, MODE_CHANGE):
        # Public <-> Private: disable, rewrite, enable in the new mode, rewrite (two ARM writes).
        if state.private:
            return MODE_CHANGE, KmsTarget(True, False, rng.randrange(3)), 2
        return MODE_CHANGE, KmsTarget(True, True, 0), 2
    return DISABLE, KmsTarget(False), 1


def _faults(rng: random.Random, replicas: int, max_faults: int) -> tuple[Fault, ...]:
    count = rng.randint(1, max_faults)
    kinds = rng.sample(FAULTS, count)
    out = []
    for kind in kinds:
        delay = round(rng.uniform(0.0, 8.0), 1)
        if kind == LAGGING_ROLL:
            out.append(Fault(kind, 0.0, seconds=round(rng.uniform(4.0, 15.0), 1)))
        elif kind == REPLICA_RESTART:
            out.append(Fault(kind, delay, replica=rng.randrange(replicas)))
        elif kind == KEYVAULT_5XX:
            out.append(Fault(kind, delay, seconds=round(rng.uniform(1.0, 4.0), 1)))
        elif kind in (LOST_ARM_RESPONSE, ARM_FAILED_AFTER_APPLY, ARM_429_STORM):
            out.append(Fault(kind, 0.0))  # armed before the change, so the step's own calls meet it
        else:
            out.append(Fault(kind, delay))
    return tuple(sorted(out, key=lambda f: f.delay))


def make_schedule(seed: int, steps: int, *, replicas: int = 2, max_faults: int = 3) -> list[Step]:
    """``steps`` changes starting from KMS disabled, with 1..``max_faults`` faults each."""
    rng = random.Random(seed)
    state = KmsTarget(False)
    out: list[Step] = []
    for _ in range(steps):
        action, target, writes = _next_action(rng, state)
        out.append(Step(action, target, writes, _faults(rng, replicas, max_faults)))
        state = target
    return out
