-- Store schema of the ICU edge gateway (SQLite, WAL).
-- records: every stored record, one row per (kind, device_id, seq); the outbox is the rows with
-- sent = 0. Each kind is its own stream with its own per-device seq (it goes to its own topic), so
-- a consumer sees gapless seqs on every topic.
CREATE TABLE IF NOT EXISTS devices (
    device_id   TEXT    NOT NULL,
    kind        INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL,
    PRIMARY KEY (device_id, kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS records (
    device_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    kind         INTEGER NOT NULL,       -- 1 observation, 2 alarm (see outbox::Stream)
    bed          TEXT    NOT NULL,
    received_us  INTEGER NOT NULL,
    payload      BLOB    NOT NULL,       -- icu.v1.StoredRecord (protobuf)
    sent         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, device_id, seq)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS records_unsent ON records (kind, device_id, seq) WHERE sent = 0;

-- HL7 messages already stored, so a sender's retry after a lost ACK is answered AA without
-- storing the same readings twice under new seqs.
CREATE TABLE IF NOT EXISTS messages (
    device_id    TEXT    NOT NULL,
    control_id   TEXT    NOT NULL,
    digest       INTEGER NOT NULL,
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    received_us  INTEGER NOT NULL,
    PRIMARY KEY (device_id, control_id)
) WITHOUT ROWID;

-- Pruning (disk budget) deletes a device's dedup rows once all their readings are gone.
CREATE INDEX IF NOT EXISTS messages_by_last_seq ON messages (device_id, last_seq);

-- Rejected input: what, from where, at which stream offset, and why.
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_us   INTEGER NOT NULL,
    transport     TEXT    NOT NULL,
    peer          TEXT    NOT NULL,
    device_id     TEXT,
    stream_offset INTEGER NOT NULL,
    ack_code      TEXT    NOT NULL,
    error_code    INTEGER NOT NULL,
    location      TEXT,
    reason        TEXT    NOT NULL,
    raw           BLOB    NOT NULL,
    raw_len       INTEGER NOT NULL,
    forwarded     INTEGER NOT NULL DEFAULT 0
);
