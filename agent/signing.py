"""Signing windows into the node's chain."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from msgspec.structs import replace

from agent.errors import AgentError
from agent.sources.cc import CcEvidence
from agent.spool import DROP_REASONS, DropPlan, Spool, is_disk_full
from attestation import dsse
from attestation.cc import CC_CHAIN_UNAVAILABLE_FIELD, CC_EVENT, CC_UNAVAILABLE_FIELD, CcReport, cc_nonce
from attestation.chain import AGENT_START_EVENT
from attestation.keys import Signer
from attestation.statement import Chain, Dropped, Event, LogCheckpointRef, Rotation, UsageWindow, statement_bytes
from attestation.wire import envelope_to_bytes

_logger = logging.getLogger(__name__)


class WindowOverlapError(AgentError):
    """A window would overlap the last signed one (the clock went back)."""


class SpoolFullError(AgentError):
    """The spool's disk is full: the window was not recorded (the next statement says so)."""

    def diagnostics(self) -> str:
        return (
            f"{self}\nFree space on the spool's file system (or lower spool_max_bytes so the spool "
            "drops, with a signed explanation, before the disk fills). The agent keeps sampling and "
            "records the lost windows in the next statement it can spool."
        )


# Event kinds the signer adds to a statement to explain what the statements around it lack.
WINDOWS_NOT_RECORDED_EVENT = "windows_not_recorded"


class ChainSigner:
    """Fills in each window's chain (seq, prev), signs it, and spools it durably."""

    # The first statement a process signs says so: a new boot id is then explained.
    START_EVENT = AGENT_START_EVENT

    def __init__(
        self,
        signer: Signer,
        spool: Spool,
        *,
        cc: Callable[[bytes], CcEvidence] | None = None,
        cc_every: int = 60,
        spool_max_bytes: int = 0,
        spool_max_age_s: int = 0,
    ) -> None:
        self.signer = signer
        self.spool = spool
        # The latest log checkpoint the stream received; put into each statement signed.
        self.log_checkpoint: LogCheckpointRef | None = None
        # Confidential-computing evidence (attestation.cc): asked every ``cc_every`` statements.
        self._cc = cc
        self._cc_every = max(1, cc_every)
        self._cc_last_seq: int | None = None
        self._started = False
        # Spool bounds (0: none; agent/spool.py plan_drop) and what the next statement must explain.
        self._spool_max_bytes = spool_max_bytes
        self._spool_max_age_ms = spool_max_age_s * 1000
        self._notes: list[Event] = []
        self._unrecorded: tuple[int, int, int, str] | None = None  # (windows, first start, last end, error)
        # Statements this process dropped unsent by a spool bound, by reason (agent/metrics.py).
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        state = spool.chain_state(signer.key_id)
        self.next_seq = state.next_seq
        self.last_digest = state.last_digest
        self.last_end_ms = state.last_end_ms
        # Key epochs: 0 for an enrolled key, +1 per rotation (kept in the spool's meta).
        self.epoch = int(spool.get_meta(f"epoch/{signer.key_id}") or 0)
        link = (spool.get_meta(f"rotated_from/{signer.key_id}") or "").split(" ")
        self._link: tuple[str, str] | None = (link[0], link[1]) if len(link) == 2 else None
        self._rotate_to: Signer | None = None
        self.on_rotated: Callable[[Signer, Signer], None] | None = None
        # When this key signed its first window (ms; agent/rotation.py schedules rotations from it).
        since = spool.get_meta(f"key_since_ms/{signer.key_id}")
        self.key_since_ms: int | None = int(since) if since is not None else None

    @property
    def rotating(self) -> bool:
        """A rotation is pending: the next statement signed hands over to the new key."""
        return self._rotate_to is not None

    def rotate(self, new_signer: Signer) -> None:
        """Sign the next statement as this key's last, naming ``new_signer``; continue with it.

        The old key signs the ``rotation`` statement (new key id and SPKI); the new chain
        starts at seq 0 with ``epoch`` + 1 and ``prev_key_id``/``prev_key_digest`` naming
        that statement, which is how the collector accepts the new key without a join token
        and the verifier links the chains (docs/formats.md, "Key rotation").
        """
        if new_signer.key_id == self.signer.key_id:
            raise ValueError("the new key is the current key")
        self._rotate_to = new_signer

    def sign(self, window: UsageWindow) -> tuple[int, dsse.Envelope]:
        if self.last_end_ms is not None and window.start_ms < self.last_end_ms:
            raise WindowOverlapError(
                f"window {window.start_ms}..{window.end_ms} overlaps the last signed window ending {self.last_end_ms}"
            )
        seq = self.next_seq
        link = self._link if seq == 0 else None
        chain = Chain(
            key_id=self.signer.key_id,
            seq=seq,
            prev=self.last_digest if seq else None,
            epoch=self.epoch,
            prev_key_id=link[0] if link else None,
            prev_key_digest=link[1] if link else None,
        )
        w = replace(
            window,
            chain=chain,
            log_checkpoint=self.log_checkpoint,
            key_assurance=self.signer.assurance,
        )
        new = self._rotate_to
        if new is not None:
            w = replace(w, rotation=Rotation(new.key_id, new.public_key().spki_der, new.assurance))
        if not self._started:
            w = replace(w, events=(*w.events, Event(self.START_EVENT, f"boot_id {w.boot_id}")))
        cc_last_seq = self._cc_last_seq
        w = self._bind_cc(w, chain)
        w = replace(w, events=(*w.events, *self._explanations()))
        drop = self._plan_drop(w, seq)
        if drop is not None:
            record = Dropped(drop.from_seq, drop.to_seq, drop.count, drop.reason, self.last_digest or "")
            w = replace(w, dropped=record)
        env = dsse.sign(statement_bytes(w), self.signer)
        digest = env.digest()
        meta = self._durable_with(w, digest, new)
        try:
            n_dropped = self.spool.append(self.signer.key_id, seq, digest, envelope_to_bytes(env), w.end_ms, drop, meta)
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            # Never stored nor sent: seq is free for the next window, which says this one is missing.
            self._cc_last_seq = cc_last_seq
            n, first, _, _ = self._unrecorded or (0, w.start_ms, 0, "")
            self._unrecorded = (n + 1, first, w.end_ms, str(exc))
            raise SpoolFullError(f"window {w.start_ms}..{w.end_ms} not recorded: spool {exc}") from exc
        if drop is not None:
            self.dropped[drop.reason] = self.dropped.get(drop.reason, 0) + n_dropped
            _logger.warning(
                "spool bound reached (%s): dropped %d unacknowledged statement(s) seq %d..%d; "
                "statement %d records it, signed",
                drop.reason,
                drop.count,
                drop.from_seq,
                drop.to_seq,
                seq,
            )
        self._notes.clear()
        self._unrecorded = None
        self.next_seq = seq + 1
        self.last_digest = digest
        self.last_end_ms = w.end_ms
        self._started = True
        if self.key_since_ms is None:
            self.key_since_ms = w.start_ms
        if new is not None:
            self._switch(new, digest)
        return seq, env

    def _durable_with(self, w: UsageWindow, digest: str, new: Signer | None) -> dict[str, str]:
        """Spool meta written in the statement's own transaction.

        The hand-over's link (``rotated_from``, ``epoch``) and the new key's enrollment are
        durable exactly when the hand-over statement is: a crash can never leave a spooled
        hand-over whose new chain does not link to it, nor a linked chain whose hand-over
        was lost (agent/rotation.py ``resume_rotation`` finishes the rest on start)."""
        meta: dict[str, str] = {}
        if self.key_since_ms is None:
            meta[f"key_since_ms/{self.signer.key_id}"] = str(w.start_ms)
        if new is not None:
            meta[f"epoch/{new.key_id}"] = str(self.epoch + 1)
            meta[f"rotated_from/{new.key_id}"] = f"{self.signer.key_id} {digest}"
            # The collector enrolls the new key from the hand-over: no join token is needed.
            meta["enrolled_key_id"] = new.key_id
        return meta

    def _switch(self, new: Signer, rotation_digest: str) -> None:
        old = self.signer
        self.epoch += 1
        self._link = (old.key_id, rotation_digest)
        self.signer = new
        self._rotate_to = None
        state = self.spool.chain_state(new.key_id)
        self.next_seq = state.next_seq
        self.last_digest = state.last_digest
        since = self.spool.get_meta(f"key_since_ms/{new.key_id}")
        self.key_since_ms = int(since) if since is not None else None
        _logger.info("rotated signing key %s -> %s (epoch %d)", old.key_id, new.key_id, self.epoch)
        if self.on_rotated is not None:
            self.on_rotated(old, new)

    def note(self, event: Event) -> None:
        """Put ``event`` into the next statement signed (e.g. a clock jump it must explain)."""
        self._notes.append(event)

    def _explanations(self) -> list[Event]:
        out = list(self._notes)
        if self._unrecorded is not None:
            n, first, last, error = self._unrecorded
            out.append(
                Event(
                    WINDOWS_NOT_RECORDED_EVENT,
                    f"{n} window(s) between {first} and {last} ms were not recorded: the spool failed ({error})",
                )
            )
        return out

    def _plan_drop(self, w: UsageWindow, seq: int) -> DropPlan | None:
        if not self._spool_max_bytes and not self._spool_max_age_ms:
            return None
        # The envelope adds the signature, key id and framing to the statement's bytes.
        incoming = len(statement_bytes(w)) + 512
        return self.spool.plan_drop(
            self.signer.key_id, seq, incoming, self._spool_max_bytes, self._spool_max_age_ms, w.end_ms
        )

    def _bind_cc(self, w: UsageWindow, chain: Chain) -> UsageWindow:
        """Attach CC attestation reports over the chain-derived nonce, or say why there are none."""
        if self._cc is None:
            return replace(w, unavailable={**w.unavailable, CC_UNAVAILABLE_FIELD: "no_cc_source"})
        if self._cc_last_seq is not None and chain.seq - self._cc_last_seq < self._cc_every:
            reason = f"see_seq_{self._cc_last_seq}"
            return replace(w, unavailable={**w.unavailable, CC_UNAVAILABLE_FIELD: reason})
        nonce = cc_nonce(chain.key_id, chain.seq, chain.prev)
        try:
            ev = self._cc(nonce)
        except Exception as exc:  # evidence is optional: never lose a statement over it
            _logger.warning("confidential-computing attestation failed: %s", exc)
            ev = CcEvidence(reason=f"error:{type(exc).__name__}")
        if not ev.reports:
            reason = ev.reason or "no_report"
            return replace(w, unavailable={**w.unavailable, CC_UNAVAILABLE_FIELD: reason})
        self._cc_last_seq = chain.seq
        gpus = []
        for g in w.gpus:
            report = ev.reports.get(g.index)
            if report is not None:
                cert_chain = ev.chains.get(g.index)
                event = Event(CC_EVENT, CcReport(nonce=nonce, report=report, cert_chain=cert_chain).detail())
                g = replace(g, events=(*g.events, event))
                if cert_chain is None:
                    why = ev.chain_unavailable.get(g.index, "no_cert_chain")
                    g = replace(g, unavailable={**g.unavailable, CC_CHAIN_UNAVAILABLE_FIELD: why})
            elif g.index in ev.unavailable:
                g = replace(g, unavailable={**g.unavailable, CC_UNAVAILABLE_FIELD: ev.unavailable[g.index]})
            gpus.append(g)
        return replace(w, gpus=tuple(gpus))
