"""AKS's control-plane side of a KMS change, played on the lab's real API server replicas.

When the fake ARM accepts a KMS change it calls ``on_kms_change`` while the operation is still
Updating. Like AKS, this:

1. shifts the two key slots (``encryption.KeySlots``),
2. makes sure a provider exists for every loaded key (a KMS v2 plugin per key version in the lab,
   or a derived aescbc key in the integration tests),
3. writes the EncryptionConfiguration (current key first, previous second; identity first when
   disabled) and rolls the API server replicas ONE AT A TIME: copy the configuration into that
   replica's own file, restart it, wait for its /readyz, then wait ``roll_interval`` seconds before
   the next one,

and only then lets the fake complete the long-running operation.

AKS promises nothing stronger than "the operation succeeded", and a replica that has not been rolled
keeps its old configuration: it still writes with the old key and cannot read a Secret stored under
the new one. ``lag_last_seconds`` reproduces the worst case: the operation completes after all but
the last replica have been rolled, and the last one is rolled that many seconds later in a
background thread. Until then, a request the balancer sends to it is served with the old keys; a
no-op patch of a Secret still under the old key answers "unchanged" there and stays under the old
key.

A replica that comes back live but never ready within ``ready_timeout`` (it cannot decrypt Secrets
stored under a key it no longer loads, so its watch cache never fills: the state the issue describes
after V2 -> V3 with Secrets stranded under V1) is left serving as it is, the roll goes on, and the
operation ends Failed once every replica has the new configuration: applied, and failed.

``roll_interval``, ``lag_last_seconds`` and ``ready_timeout`` are plain attributes: tests and the
chaos suite change them between steps. :meth:`ApiServerKms.wait_settled` waits until no roll is in flight;
:meth:`ApiServerKms.close` cancels a pending lagging roll (call it before stopping the control plane).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane, ReplicaNotReady
from .encryption import KeySlots, ProviderFor, encryption_configuration, write_configuration

log = logging.getLogger(__name__)


class ApiServerKms:
    """Keeps the API server replicas' encryption in step with the fake AKS cluster's KMS block."""

    def __init__(
        self,
        control_plane: ControlPlane,
        config_path: Path,
        provider: ProviderFor,
        *,
        load_key: Callable[[str], None] = lambda key_url: None,
        state_path: Path | None = None,
        roll_interval: float = 0.0,
        lag_last_seconds: float | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        self.cp = control_plane
        self.config_path = config_path
        self.provider = provider
        self.load_key = load_key  # start the plugin for a key version before the API server needs it
        self.state_path = state_path
        self.roll_interval = roll_interval
        self.lag_last_seconds = lag_last_seconds
        self.ready_timeout = ready_timeout
        self._lock = threading.Lock()  # one KMS change at a time (the fake ARM allows one operation)
        self._state = threading.Condition()  # guards the fields below
        self.slots = KeySlots()
        self.replica_slots: list[KeySlots] = [KeySlots() for _ in range(control_plane.apiservers)]
        if state_path and state_path.exists():
            data = json.loads(state_path.read_text())
            self.slots = KeySlots.from_json(data)
            saved = data.get("replicas") or []
            self.replica_slots = [KeySlots.from_json(saved[i]) if i < len(saved) else KeySlots.from_json(data)
                                  for i in range(control_plane.apiservers)]
        self.changes = 0
        self._generation = 0  # bumped by every change; a lagging roll of an older one is dropped
        self._in_flight = 0  # rolls running (foreground or lagging)
        self._lagging: threading.Thread | None = None
        self._closed = threading.Event()

    # ------------------------------------------------------------------ state

    @property
    def rolling(self) -> bool:
        """A roll is in flight (the operation's own, or a lagging last replica)."""
        with self._state:
            return self._in_flight > 0

    def wait_settled(self, timeout: float = 120) -> None:
        """Block until no roll is in flight (every replica runs the latest configuration)."""
        deadline = time.monotonic() + timeout
        with self._state:
            while self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"an API server roll is still in flight after {timeout:.0f}s")
                self._state.wait(remaining)

    def loaded_keys(self) -> set[str]:
        """Every key version some replica can read now (the union over replicas)."""
        with self._state:
            return {k for s in self.replica_slots for k in s.loaded()}

    def close(self) -> None:
        """Cancel a lagging roll that has not started yet and wait for one that has."""
        self._closed.set()
        with self._state:
            self._state.notify_all()
        lagging = self._lagging
        if lagging is not None and lagging is not threading.current_thread():
            lagging.join(timeout=120)

    # ------------------------------------------------------------------ configuration

    def write_config(self) -> None:
        for key in self.slots.loaded():
            self.load_key(key)
        write_configuration(self.config_path, encryption_configuration(self.slots, self.provider))
        self._save()

    def _save(self) -> None:
        if self.state_path:
            with self._state:
                data = {**self.slots.to_json(), "replicas": [s.to_json() for s in self.replica_slots]}
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.state_path)

    def _roll(self, index: int, slots: KeySlots) -> str | None:
        """Roll one replica onto ``slots``; a message if it came back live but not ready."""
        unready = None
        try:
            self.cp.restart_replica(index, self.config_path, self.ready_timeout, accept_live=True)
        except ReplicaNotReady as err:
            log.warning("%s", err)
            unready = str(err)
        with self._state:
            self.replica_slots[index] = slots
        self._save()
        return unready

    # ------------------------------------------------------------------ the fake ARM's hook

    def on_kms_change(self, cluster_key: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Runs while the operation is Updating; raising fails the operation."""
        with self._lock:
            with self._state:
                self._generation += 1
                generation = self._generation
                self._in_flight += 1
                self._state.notify_all()  # wakes a lagging roll of the previous change: it is dropped
            try:
                enabled = bool(new.get("enabled"))
                self.slots = self.slots.apply(enabled, str(new.get("keyId") or ""))
                slots = self.slots
                log.info("cluster %s: KMS %s; API servers load %s", cluster_key, "on" if enabled else "off",
                         slots.loaded())
                self.write_config()
                n = self.cp.apiservers
                lag = self.lag_last_seconds
                now = n if lag is None else n - 1
                unready = []
                for index in range(now):
                    if index and self.roll_interval > 0:
                        time.sleep(self.roll_interval)
                    message = self._roll(index, slots)
                    if message:
                        unready.append(message)
                self.changes += 1
                if lag is not None:
                    self._start_lagging(n - 1, slots, generation, float(lag))
                if unready:  # the fake ARM turns this into a Failed operation, the change applied
                    raise RuntimeError("; ".join(unready))
            finally:
                with self._state:
                    self._in_flight -= 1
                    self._state.notify_all()

    def _start_lagging(self, index: int, slots: KeySlots, generation: int, lag: float) -> None:
        with self._state:
            self._in_flight += 1

        def run() -> None:
            try:
                deadline = time.monotonic() + lag
                with self._state:
                    while not self._closed.is_set() and self._generation == generation:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._state.wait(remaining)
                    if self._closed.is_set() or self._generation != generation:
                        log.info("lagging roll of replica %d dropped (superseded or closed)", index)
                        return
                with self._lock:  # never at the same time as a newer change's roll
                    if self._generation != generation or self._closed.is_set():
                        return
                    log.info("rolling the lagging replica %d %.1fs after the operation", index, lag)
                    self._roll(index, slots)
            except Exception:
                log.exception("lagging roll of replica %d failed", index)
            finally:
                with self._state:
                    self._in_flight -= 1
                    self._state.notify_all()

        self._lagging = threading.Thread(target=run, name=f"aks-sim-lagging-replica-{index}", daemon=True)
        self._lagging.start()
