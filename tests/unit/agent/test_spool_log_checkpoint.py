"""The spool keeps the latest log checkpoint the agent received, across restarts, and opens
spools written before it kept one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.spool import Spool
from attestation.statement import LogCheckpointRef

CP = LogCheckpointRef(origin="collector.test/log", size=7, root_sha256="ab" * 32)


def test_the_latest_checkpoint_is_kept_across_a_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    assert spool.log_checkpoint() is None
    spool.save_log_checkpoint(CP)
    later = LogCheckpointRef(origin=CP.origin, size=9, root_sha256="cd" * 32)
    spool.save_log_checkpoint(later)
    spool.close()
    spool = Spool(tmp_path / "spool.db")
    assert spool.log_checkpoint() == later, "only the latest checkpoint is kept, and it survives a restart"
    spool.close()


def test_a_spool_from_before_checkpoints_were_kept_opens_and_keeps_its_statements(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE chain (key_id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, last_digest TEXT, last_end_ms INTEGER);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE spool (key_id TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
                            envelope BLOB NOT NULL, PRIMARY KEY (key_id, seq));
        INSERT INTO chain VALUES ('k1', 1, 'd0', 60000);
        INSERT INTO spool VALUES ('k1', 0, 'd0', x'00');
        """
    )
    db.commit()
    db.close()
    spool = Spool(path)
    assert spool.log_checkpoint() is None
    assert spool.count("k1") == 1 and spool.chain_state("k1").next_seq == 1, "the old spool's statements were lost"
    spool.save_log_checkpoint(CP)
    assert spool.log_checkpoint() == CP
    spool.close()
