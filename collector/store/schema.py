"""The store's schema, as migrations: SQLite's and PostgreSQL's side by side.

A new table or column is one new script in each tuple, with the same number; the SQL that
reads and writes it is written once (``collector.store.shared``). The backends apply them
(``collector.store.sqlite.migrate``, ``collector.store.postgres.migrate``) and re-export
them as their ``MIGRATIONS``.
"""

from __future__ import annotations

__all__ = ["POSTGRES_MIGRATIONS", "SQLITE_MIGRATIONS"]

# Script i brings the schema from version i to version i + 1. Append only: never edit a
# migration that has shipped.
SQLITE_MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE join_tokens (
        token_sha256  TEXT PRIMARY KEY,          -- hex SHA-256 of the token; the token is never stored
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        used_ms       INTEGER,
        used_by_node  TEXT
    ) STRICT;

    CREATE TABLE node_keys (
        key_id       TEXT PRIMARY KEY,           -- "sha256:" + hex SHA-256 of spki_der
        node_id      TEXT NOT NULL,
        algorithm    TEXT NOT NULL,
        spki_der     BLOB NOT NULL,
        assurance    TEXT NOT NULL,
        enrolled_ms  INTEGER NOT NULL,
        revoked_ms   INTEGER
    ) STRICT;
    CREATE INDEX node_keys_node ON node_keys (node_id);

    CREATE TABLE chain_heads (
        key_id         TEXT PRIMARY KEY REFERENCES node_keys (key_id),
        seq            INTEGER NOT NULL,
        digest         TEXT NOT NULL,
        end_ms         INTEGER NOT NULL,
        boot_id        TEXT NOT NULL,
        energy_end_mj  TEXT NOT NULL             -- JSON object: GPU uuid -> mJ
    ) STRICT;

    CREATE TABLE statements (
        id            INTEGER PRIMARY KEY,
        key_id        TEXT NOT NULL REFERENCES node_keys (key_id),
        seq           INTEGER NOT NULL,
        node_id       TEXT NOT NULL,
        start_ms      INTEGER NOT NULL,
        end_ms        INTEGER NOT NULL,
        digest        TEXT NOT NULL,             -- hex SHA-256 of the envelope's PAE
        payload       BLOB NOT NULL,             -- the signed bytes, exactly as received
        payload_type  TEXT NOT NULL,
        signatures    TEXT NOT NULL,             -- JSON, DSSE envelope.md form
        received_ms   INTEGER NOT NULL,
        UNIQUE (key_id, seq)
    ) STRICT;
    CREATE INDEX statements_window ON statements (start_ms);

    CREATE TABLE conflicts (
        id               INTEGER PRIMARY KEY,
        key_id           TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        original_digest  TEXT NOT NULL,
        digest           TEXT NOT NULL,
        payload          BLOB NOT NULL,
        payload_type     TEXT NOT NULL,
        signatures       TEXT NOT NULL,
        received_ms      INTEGER NOT NULL,
        UNIQUE (key_id, seq, digest)
    ) STRICT;

    CREATE TABLE refusals (
        id        INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        node_id   TEXT,
        key_id    TEXT,
        seq       INTEGER,
        reason    TEXT NOT NULL,
        message   TEXT NOT NULL
    ) STRICT;

    CREATE TABLE refusal_counts (
        reason  TEXT PRIMARY KEY,
        count   INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE findings (
        finding_id   TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        tenant       TEXT NOT NULL,
        severity     TEXT NOT NULL,
        started_ms   INTEGER NOT NULL,
        detected_ms  INTEGER NOT NULL,
        json         TEXT NOT NULL
    ) STRICT;
    CREATE INDEX findings_tenant ON findings (tenant, started_ms);
    """,
    # 2: the transparency log (RFC 9162 leaves, in commit order) and its signed checkpoints.
    # Statements stored before this version get their leaves when the store is opened
    # (_backfill_log_leaves): SQLite cannot compute SHA-256 in a migration script.
    """
    CREATE TABLE log_leaves (
        leaf_index  INTEGER PRIMARY KEY,        -- 0, 1, 2, ... in the order statements committed
        key_id      TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        leaf_hash   BLOB NOT NULL,              -- SHA-256(0x00 || PAE)
        UNIQUE (key_id, seq),
        FOREIGN KEY (key_id, seq) REFERENCES statements (key_id, seq)
    ) STRICT;

    CREATE TABLE checkpoints (
        id          INTEGER PRIMARY KEY,
        tree_size   INTEGER NOT NULL,
        root_hash   BLOB NOT NULL,
        signed_ms   INTEGER NOT NULL,
        note        TEXT NOT NULL               -- the C2SP signed note, exactly as signed
    ) STRICT;
    """,
    # 3: retention: a statement's payload and signatures may age into hourly aggregates;
    # its row (digest, chain position) and its log leaf stay (collector/retention.py).
    """
    ALTER TABLE statements ADD COLUMN pruned_ms INTEGER;   -- set when the payload was dropped
    CREATE TABLE usage_hourly (
        hour_ms           INTEGER NOT NULL,     -- UTC hour the windows start in
        node_id           TEXT NOT NULL,
        gpu_uuid          TEXT NOT NULL,
        tenant            TEXT NOT NULL,        -- "" = no workload
        windows           INTEGER NOT NULL,
        window_ms         INTEGER NOT NULL,
        energy_mj         INTEGER NOT NULL,
        util_permille_ms  INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, gpu_uuid, tenant)
    ) STRICT;
    CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant, hour_ms);
    """,
    # 4: tenant pseudonyms revealed by an operator (collector/pseudonyms.py): who, when, why.
    """
    CREATE TABLE reveal_audit (
        id          INTEGER PRIMARY KEY,
        at_ms       INTEGER NOT NULL,
        pseudonym   TEXT NOT NULL,
        tenant      TEXT,                       -- NULL: no tenant has this pseudonym
        operator    TEXT NOT NULL,
        reason      TEXT NOT NULL
    ) STRICT;
    """,
    # 5: the roots of complete tiles of log leaves (collector/log.py), so that a restarted
    # collector rebuilds its tree from one row per 1,024 leaves instead of reading every leaf.
    """
    CREATE TABLE log_tiles (
        height      INTEGER NOT NULL,            -- log2 of the leaves per tile
        tile        INTEGER NOT NULL,            -- leaves tile * 2**height .. (tile + 1) * 2**height - 1
        root        BLOB NOT NULL,               -- RFC 9162 hash of the tile's subtree
        PRIMARY KEY (height, tile)
    ) STRICT;
    """,
    # 6: per-key heads committed at the latest checkpoint (attestation/heads.py, collector/log.py):
    # for each key, its statement with the highest seq among the first tree_size leaves.
    """
    CREATE TABLE log_heads (
        key_id      TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        leaf_index  INTEGER NOT NULL,
        digest      TEXT NOT NULL,               -- hex SHA-256 of the statement's PAE
        end_ms      INTEGER NOT NULL,
        serials     TEXT NOT NULL                -- JSON list of the GPU serials it names
    ) STRICT;
    CREATE TABLE log_heads_state (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        tree_size   INTEGER NOT NULL             -- the heads in log_heads are those at this size
    ) STRICT;
    INSERT INTO log_heads_state (id, tree_size) VALUES (1, 0);
    """,
    # 7: the findings workflow (issue 17): who acknowledged, assigned, closed or reopened a
    # finding, and why. Append-only history; the detector's findings rows are never changed by
    # it, and a finding's workflow state is derived from its actions (collector.store.base).
    """
    CREATE TABLE finding_actions (
        id          INTEGER PRIMARY KEY,        -- the order actions were recorded in
        finding_id  TEXT NOT NULL REFERENCES findings (finding_id),
        action      TEXT NOT NULL CHECK (action IN ('acknowledge', 'assign', 'close', 'reopen')),
        actor       TEXT NOT NULL,              -- who did it
        assignee    TEXT,                       -- 'assign' only: to whom
        reason      TEXT NOT NULL,              -- why ('' only for an assign given none)
        at_ms       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX finding_actions_finding ON finding_actions (finding_id, id);
    CREATE TRIGGER finding_actions_no_update BEFORE UPDATE ON finding_actions
    BEGIN SELECT RAISE(ABORT, 'finding actions are append-only'); END;
    CREATE TRIGGER finding_actions_no_delete BEFORE DELETE ON finding_actions
    BEGIN SELECT RAISE(ABORT, 'finding actions are append-only'); END;
    """,
)

# Script i brings the schema from version i to version i + 1, mirroring SQLite's script i
# (a test fails when SQLite has a version PostgreSQL lacks). Append only.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema (sqlite 1)
    """
    CREATE TABLE join_tokens (
        token_sha256  TEXT PRIMARY KEY,
        created_ms    BIGINT NOT NULL,
        expires_ms    BIGINT NOT NULL,
        used_ms       BIGINT,
        used_by_node  TEXT
    );
    CREATE TABLE node_keys (
        key_id       TEXT PRIMARY KEY,
        node_id      TEXT NOT NULL,
        algorithm    TEXT NOT NULL,
        spki_der     BYTEA NOT NULL,
        assurance    TEXT NOT NULL,
        enrolled_ms  BIGINT NOT NULL,
        revoked_ms   BIGINT
    );
    CREATE INDEX node_keys_node ON node_keys (node_id);
    CREATE TABLE chain_heads (
        key_id         TEXT PRIMARY KEY REFERENCES node_keys (key_id),
        seq            BIGINT NOT NULL,
        digest         TEXT NOT NULL,
        end_ms         BIGINT NOT NULL,
        boot_id        TEXT NOT NULL,
        energy_end_mj  TEXT NOT NULL
    );
    CREATE TABLE statements (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id        TEXT NOT NULL REFERENCES node_keys (key_id),
        seq           BIGINT NOT NULL,
        node_id       TEXT NOT NULL,
        start_ms      BIGINT NOT NULL,
        end_ms        BIGINT NOT NULL,
        digest        TEXT NOT NULL,
        payload       BYTEA NOT NULL,
        payload_type  TEXT NOT NULL,
        signatures    TEXT NOT NULL,
        received_ms   BIGINT NOT NULL,
        UNIQUE (key_id, seq)
    );
    CREATE INDEX statements_window ON statements (start_ms);
    CREATE TABLE conflicts (
        id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id           TEXT NOT NULL,
        seq              BIGINT NOT NULL,
        original_digest  TEXT NOT NULL,
        digest           TEXT NOT NULL,
        payload          BYTEA NOT NULL,
        payload_type     TEXT NOT NULL,
        signatures       TEXT NOT NULL,
        received_ms      BIGINT NOT NULL,
        UNIQUE (key_id, seq, digest)
    );
    CREATE TABLE refusals (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms     BIGINT NOT NULL,
        node_id   TEXT,
        key_id    TEXT,
        seq       BIGINT,
        reason    TEXT NOT NULL,
        message   TEXT NOT NULL
    );
    CREATE TABLE refusal_counts (
        reason  TEXT PRIMARY KEY,
        count   BIGINT NOT NULL
    );
    CREATE TABLE findings (
        finding_id   TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        tenant       TEXT NOT NULL,
        severity     TEXT NOT NULL,
        started_ms   BIGINT NOT NULL,
        detected_ms  BIGINT NOT NULL,
        json         TEXT NOT NULL
    );
    CREATE INDEX findings_tenant ON findings (tenant, started_ms);
    """,
    # 2: the transparency log (sqlite 2), plus the single-row leaf counter that sequences
    # leaves across collectors.
    """
    CREATE TABLE log_leaves (
        leaf_index  BIGINT PRIMARY KEY,
        key_id      TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        leaf_hash   BYTEA NOT NULL,
        UNIQUE (key_id, seq),
        FOREIGN KEY (key_id, seq) REFERENCES statements (key_id, seq)
    );
    CREATE TABLE checkpoints (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tree_size   BIGINT NOT NULL,
        root_hash   BYTEA NOT NULL,
        signed_ms   BIGINT NOT NULL,
        note        TEXT NOT NULL
    );
    CREATE TABLE log_state (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        size  BIGINT NOT NULL
    );
    INSERT INTO log_state (id, size) VALUES (1, 0);
    """,
    # 3: retention (sqlite 3): statements whose payload aged into hourly aggregates.
    """
    ALTER TABLE statements ADD COLUMN pruned_ms BIGINT;
    CREATE TABLE usage_hourly (
        hour_ms           BIGINT NOT NULL,
        node_id           TEXT NOT NULL,
        gpu_uuid          TEXT NOT NULL,
        tenant            TEXT NOT NULL,
        windows           BIGINT NOT NULL,
        window_ms         BIGINT NOT NULL,
        energy_mj         BIGINT NOT NULL,
        util_permille_ms  BIGINT NOT NULL,
        PRIMARY KEY (hour_ms, gpu_uuid, tenant)
    );
    CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant, hour_ms);
    """,
    # 4: tenant pseudonyms revealed by an operator (sqlite 4).
    """
    CREATE TABLE reveal_audit (
        id          BIGSERIAL PRIMARY KEY,
        at_ms       BIGINT NOT NULL,
        pseudonym   TEXT NOT NULL,
        tenant      TEXT,
        operator    TEXT NOT NULL,
        reason      TEXT NOT NULL
    );
    """,
    # 5: roots of complete tiles of log leaves (sqlite 5).
    """
    CREATE TABLE log_tiles (
        height      BIGINT NOT NULL,            -- log2 of the leaves per tile
        tile        BIGINT NOT NULL,            -- leaves tile * 2**height .. (tile + 1) * 2**height - 1
        root        BYTEA NOT NULL,              -- RFC 9162 hash of the tile's subtree
        PRIMARY KEY (height, tile)
    );
    """,
    # 6: per-key heads committed at the latest checkpoint (sqlite 6).
    """
    CREATE TABLE log_heads (
        key_id      TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        leaf_index  BIGINT NOT NULL,
        digest      TEXT NOT NULL,
        end_ms      BIGINT NOT NULL,
        serials     TEXT NOT NULL
    );
    CREATE TABLE log_heads_state (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        tree_size   BIGINT NOT NULL
    );
    INSERT INTO log_heads_state (id, tree_size) VALUES (1, 0);
    """,
    # 7: the findings workflow (sqlite 7), append-only.
    """
    CREATE TABLE finding_actions (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        finding_id  TEXT NOT NULL REFERENCES findings (finding_id),
        action      TEXT NOT NULL CHECK (action IN ('acknowledge', 'assign', 'close', 'reopen')),
        actor       TEXT NOT NULL,
        assignee    TEXT,
        reason      TEXT NOT NULL,
        at_ms       BIGINT NOT NULL
    );
    CREATE INDEX finding_actions_finding ON finding_actions (finding_id, id);
    CREATE FUNCTION finding_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'finding actions are append-only';
    END;
    $$;
    CREATE TRIGGER finding_actions_no_change BEFORE UPDATE OR DELETE ON finding_actions
        FOR EACH ROW EXECUTE FUNCTION finding_actions_append_only();
    """,
)
