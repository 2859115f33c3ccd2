"""Per-run counters of the rewrite and how one write's answer maps onto them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any


class Outcome(enum.Enum):
    REENCRYPTED = "reencrypted"  # the resourceVersion changed: the stored copy was stale and was rewritten
    # Same resourceVersion: the replica that answered held the stored copy current and left etcd alone.
    # That is proof only if every replica writes with the target key; a replica that has not reloaded
    # answers the same for a Secret still under the old key. Only the verification pass proves it.
    ALREADY_CURRENT = "alreadyCurrent"
    SKIPPED = "skipped"  # 404 (deleted) or 409 (written or re-created by someone else since the list)
    FAILED = "failed"  # anything else, after bounded retries


def classify_write(listed_rv: str, answered_rv: str | None) -> Outcome:
    """A successful no-op write: the RV says whether the answering API server replica rewrote the object.

    Unchanged means "current for that replica"; it means "under the target key" only from the point of
    view of a verification pass that found nothing left to re-encrypt (invariant 10)."""
    return Outcome.ALREADY_CURRENT if answered_rv == listed_rv else Outcome.REENCRYPTED


def classify_status(status: int) -> Outcome | None:
    """A final HTTP error status; ``None`` means "not final" (retry: 429, 5xx)."""
    if status in (404, 409):
        return Outcome.SKIPPED
    if status == 429 or status >= 500:
        return None
    return Outcome.FAILED


@dataclass
class RewriteCounters:
    """``seen`` counts listed Secrets; every seen Secret ends in exactly one outcome."""

    seen: int = 0
    reencrypted: int = 0
    already_current: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # "namespace/name: error", first few only
    max_failures: int = field(default=20, repr=False, compare=False)
    # Tries answered with a 5xx or a dropped connection and then retried: not an outcome, a symptom.
    # An API server replica that has not loaded the key a Secret is stored under answers 500 for it,
    # so a verification pass counts these as evidence that a replica was behind.
    retried: int = 0

    def record(self, outcome: Outcome, ref: str = "", error: str = "") -> None:
        if outcome is Outcome.REENCRYPTED:
            self.reencrypted += 1
        elif outcome is Outcome.ALREADY_CURRENT:
            self.already_current += 1
        elif outcome is Outcome.SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1
            if len(self.failures) < self.max_failures:
                self.failures.append(f"{ref}: {error}"[:300])

    @property
    def done(self) -> int:
        return self.reencrypted + self.already_current + self.skipped + self.failed

    @property
    def writes(self) -> int:
        """Writes that got an answer the run accepted (rewritten or not)."""
        return self.reencrypted + self.already_current

    def add(self, other: RewriteCounters) -> None:
        for name in ("seen", "reencrypted", "already_current", "skipped", "failed", "retried"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = self.max_failures - len(self.failures)
        if room > 0:
            self.failures.extend(other.failures[:room])

    def copy(self) -> RewriteCounters:
        return RewriteCounters(self.seen, self.reencrypted, self.already_current, self.skipped, self.failed,
                               list(self.failures), self.max_failures, self.retried)

    def to_status(self) -> dict[str, Any]:
        return {"seen": self.seen, "reencrypted": self.reencrypted, "alreadyCurrent": self.already_current,
                "skipped": self.skipped, "failed": self.failed, "failures": list(self.failures),
                "retried": self.retried}

    @classmethod
    def from_status(cls, data: dict[str, Any]) -> RewriteCounters:
        return cls(seen=int(data.get("seen") or 0), reencrypted=int(data.get("reencrypted") or 0),
                   already_current=int(data.get("alreadyCurrent") or 0), skipped=int(data.get("skipped") or 0),
                   failed=int(data.get("failed") or 0), failures=list(data.get("failures") or []),
                   retried=int(data.get("retried") or 0))


COUNTER_FIELDS = tuple(f.name for f in fields(RewriteCounters)
                       if f.name not in ("failures", "max_failures", "retried"))
