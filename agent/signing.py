"""Signing windows into the node's chain."""

from __future__ import annotations

import dataclasses
import logging

from agent.spool import Spool
from attestation import dsse
from attestation.keys import Signer
from attestation.statement import Chain, UsageWindow, statement_bytes
from attestation.wire import envelope_to_bytes

_logger = logging.getLogger(__name__)


class WindowOverlapError(Exception):
    """A window would overlap the last signed one (the clock went back)."""


class ChainSigner:
    """Fills in each window's chain (seq, prev), signs it, and spools it durably."""

    def __init__(self, signer: Signer, spool: Spool) -> None:
        self.signer = signer
        self.spool = spool
        state = spool.chain_state(signer.key_id)
        self.next_seq = state.next_seq
        self.last_digest = state.last_digest
        self.last_end_ms = state.last_end_ms

    def sign(self, window: UsageWindow) -> tuple[int, dsse.Envelope]:
        if self.last_end_ms is not None and window.start_ms < self.last_end_ms:
            raise WindowOverlapError(
                f"window {window.start_ms}..{window.end_ms} overlaps the last signed window ending {self.last_end_ms}"
            )
        seq = self.next_seq
        w = dataclasses.replace(
            window, chain=Chain(key_id=self.signer.key_id, seq=seq, prev=self.last_digest if seq else None)
        )
        env = dsse.sign(statement_bytes(w), self.signer)
        digest = env.digest()
        self.spool.append(self.signer.key_id, seq, digest, envelope_to_bytes(env), w.end_ms)
        self.next_seq = seq + 1
        self.last_digest = digest
        self.last_end_ms = w.end_ms
        return seq, env
