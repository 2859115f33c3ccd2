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

The Managed experience (KMS data encryption, ``infrastructureEncryption: Enabled`` in the block the
fake passes): AKS picks the key itself (the newest enabled version of the versionless customer key,
``resolve_key``, or its own platform key, ``platform_key``), rolls the replicas onto it and then
re-encrypts every Secret itself (a metadata-only no-op patch per Secret, as AKS's own rewrite), while the
operation is still Updating. Afterwards a detector thread looks for a new version of the customer key every
``detection_interval`` seconds (about 6 hours on AKS; the lab shortens it) and does the same on its own,
with no ARM write and no operator involved.

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
PLATFORM = "platform"  # managed_source when AKS uses its platform-managed key
MANAGED_DETECTION_SECONDS = 6 * 3600.0  # AKS: new customer key versions are picked up about every 6 hours
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


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
        resolve_key: Callable[[str], str | None] = lambda versionless: None,
        platform_key: Callable[[], str] | None = None,
        detection_interval: float = MANAGED_DETECTION_SECONDS,
    ) -> None:
        self.cp = control_plane
        self.config_path = config_path
        self.provider = provider
        self.load_key = load_key  # start the plugin for a key version before the API server needs it
        self.state_path = state_path
        self.roll_interval = roll_interval
        self.lag_last_seconds = lag_last_seconds
        self.ready_timeout = ready_timeout
        self.resolve_key = resolve_key  # versionless customer key -> its newest enabled version
        self.platform_key = platform_key  # AKS's own key for the platform-managed experience
        self.detection_interval = detection_interval
        self.managed_source = ""  # Managed experience: the versionless key, PLATFORM, or "" (legacy)
        self.reencryptions = 0  # AKS's own rewrites (Managed experience)
        self._detector: threading.Thread | None = None
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
            self.managed_source = str(data.get("managedSource") or "")
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
                data = {**self.slots.to_json(), "replicas": [s.to_json() for s in self.replica_slots],
                        "managedSource": self.managed_source}
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
                key = str(new.get("keyId") or "")
                managed = new.get("infrastructureEncryption") == "Enabled"
                if managed:  # AKS picks the key version itself
                    self.managed_source = key if enabled else PLATFORM
                    key, enabled = self._managed_key(), True
                self.slots = self.slots.apply(enabled, key)
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
                if managed:
                    self._reencrypt_all(key)
                    self.start_detector()
            finally:
                with self._state:
                    self._in_flight -= 1
                    self._state.notify_all()

    # ------------------------------------------------------------------ the Managed experience

    def _managed_key(self) -> str:
        """The key version AKS encrypts with on the Managed experience now."""
        if self.managed_source == PLATFORM:
            if self.platform_key is None:
                raise RuntimeError("this lab has no platform-managed key")
            return self.platform_key()
        newest = self.resolve_key(self.managed_source)
        if not newest:
            raise RuntimeError(f"no enabled version of {self.managed_source}")
        return newest

    def _reencrypt_all(self, key: str) -> int:
        """AKS's own rewrite: a metadata-only no-op patch per Secret; the API server re-encrypts stale ones.

        Nothing of a Secret but its metadata is ever requested or returned.
        """
        done = 0
        token = ""
        while True:
            path = "/api/v1/secrets?limit=500" + (f"&continue={token}" if token else "")
            code, page = self.cp.request("GET", path, accept=_METADATA_LIST, timeout=60)
            if code != 200 or not isinstance(page, dict):
                raise RuntimeError(f"listing Secrets for AKS's re-encryption failed: {code}")
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                patch = {"metadata": {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}}
                url = f"/api/v1/namespaces/{meta.get('namespace')}/secrets/{meta.get('name')}"
                for _ in range(20):
                    code, _ = self.cp.request("PATCH", url, patch, content_type="application/merge-patch+json",
                                              accept=_METADATA)
                    if code in (200, 404, 409):  # written, deleted, or written by someone else meanwhile
                        break
                    time.sleep(0.5)
                done += 1
            token = ((page.get("metadata") or {}).get("continue")) or ""
            if not token:
                break
        self.reencryptions += 1
        log.info("AKS re-encrypted %d Secrets under %s", done, key)
        return done

    def start_detector(self) -> None:
        if self._detector is not None and self._detector.is_alive():
            return
        self._detector = threading.Thread(target=self._detect, name="aks-sim-key-version-detector", daemon=True)
        self._detector.start()

    def _detect(self) -> None:
        """Every ``detection_interval``: a new customer key version makes AKS switch and re-encrypt."""
        while not self._closed.wait(self.detection_interval):
            try:
                self.follow_new_version()
            except Exception:
                log.exception("AKS's key version detection failed")

    def follow_new_version(self) -> bool:
        """One detection round (the detector thread's; tests may call it): True when AKS switched."""
        with self._lock:
            source = self.managed_source
            if not source or source == PLATFORM:
                return False
            newest = self.resolve_key(source)
            if not newest or newest == self.slots.current:
                return False
            with self._state:
                self._generation += 1
                self._in_flight += 1
            try:
                self.slots = self.slots.apply(True, newest)
                log.info("AKS picked up key version %s; API servers load %s", newest, self.slots.loaded())
                self.write_config()
                for index in range(self.cp.apiservers):
                    self._roll(index, self.slots)
                self.changes += 1
                self._reencrypt_all(newest)
            finally:
                with self._state:
                    self._in_flight -= 1
                    self._state.notify_all()
            return True

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
