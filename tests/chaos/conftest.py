"""Chaos suite settings: how many runs, which seed, how many steps (environment, set by the Makefile).

``make test`` runs one short fixed schedule; ``make chaos RUNS=50`` runs fifty seeded schedules. Every
run prints its seed, so ``make chaos SEED=<seed> RUNS=1`` replays a failure.
"""

from __future__ import annotations

import os

import pytest

RUNS = int(os.environ.get("CHAOS_RUNS") or 1)
FIRST_SEED = int(os.environ.get("CHAOS_SEED") or 20261201)
STEPS = int(os.environ.get("CHAOS_STEPS") or 4)
REPLICAS = int(os.environ.get("CHAOS_APISERVERS") or 2)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chaos_seed" in metafunc.fixturenames:
        seeds = [FIRST_SEED + i for i in range(RUNS)]
        metafunc.parametrize("chaos_seed", seeds, ids=[f"seed{s}" for s in seeds])
