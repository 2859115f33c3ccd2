"""Re-encrypt Secrets after a KMS key change: engine, pacing, checkpoint, key-switch canary.

See ``engine`` for how and why (metadata-only lists, one no-op merge patch per Secret).
"""

from .canary import (
    CANARY_GONE,
    CANARY_LABEL,
    CANARY_NAME,
    KEY_SWITCH_TIMEOUT,
    KEY_SWITCHED,
    KeySwitchResult,
    ensure_canary,
    wait_for_key_switch,
)
from .checkpoint import CheckpointStore, MemoryStore, PolicyStatusStore, RewriteCheckpoint
from .counters import Outcome, RewriteCounters
from .engine import RewriteEngine, RewriteOptions, RewriteResult, RunState, SecretRef, count_secrets, rewrite_secrets
from .ratelimit import BackoffGate, RetryPolicy, TokenBucket

__all__ = [
    "CANARY_GONE",
    "CANARY_LABEL",
    "CANARY_NAME",
    "KEY_SWITCHED",
    "KEY_SWITCH_TIMEOUT",
    "BackoffGate",
    "CheckpointStore",
    "KeySwitchResult",
    "MemoryStore",
    "Outcome",
    "PolicyStatusStore",
    "RetryPolicy",
    "RewriteCheckpoint",
    "RewriteCounters",
    "RewriteEngine",
    "RewriteOptions",
    "RewriteResult",
    "RunState",
    "SecretRef",
    "TokenBucket",
    "count_secrets",
    "ensure_canary",
    "rewrite_secrets",
    "wait_for_key_switch",
]
