"""Re-encrypt Secrets after a KMS key change: engine, pacing, checkpoint, key-switch canary.

See ``engine`` for how and why (metadata-only lists, one no-op merge patch per Secret).
"""

from .canary import (
    CANARY_GONE,
    CANARY_LABEL,
    CANARY_NAME,
    CANARY_REPLACED,
    KEY_SWITCH_TIMEOUT,
    KEY_SWITCH_WINDOW,
    KEY_SWITCHED,
    Canary,
    KeySwitchResult,
    ensure_canary,
    fresh_client,
    wait_for_key_switch,
)
from .checkpoint import CheckpointStore, MemoryStore, PolicyStatusStore, RewriteCheckpoint, VerificationStore
from .counters import Outcome, RewriteCounters
from .engine import RewriteEngine, RewriteOptions, RewriteResult, RunState, SecretRef, count_secrets, rewrite_secrets
from .ratelimit import BackoffGate, RetryPolicy, TokenBucket

__all__ = [
    "CANARY_GONE",
    "CANARY_LABEL",
    "CANARY_NAME",
    "CANARY_REPLACED",
    "KEY_SWITCHED",
    "KEY_SWITCH_TIMEOUT",
    "KEY_SWITCH_WINDOW",
    "BackoffGate",
    "Canary",
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
    "VerificationStore",
    "count_secrets",
    "ensure_canary",
    "fresh_client",
    "rewrite_secrets",
    "wait_for_key_switch",
]
