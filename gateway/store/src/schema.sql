-- Store schema of the ICU edge gateway (SQLite, WAL).
-- records: every stored record, by (kind, device_id, seq); the outbox is the rows with sent = 0.
-- Each kind is its own stream with its own per-device seq (it goes to its own topic), so a
-- consumer sees gapless seqs on every topic.
--
-- One row holds the n consecutive records seq .. seq + n - 1 of one stream (the readings of one
-- received message: at most 64 per row). n = 1: payload is one icu.v1.StoredRecord; n > 1: an
-- icu.v1.StoredRecordRun of the n records in seq order, as one zstd frame (db.rs
-- `compress_run`; an uncompressed run, first byte 0x0A, is read as well). Store files written before rows held
-- several records get the columns n (1), sent_upto (0), control_id and digest (NULL) added when
-- opened.
--
-- A row is sent (sent = 1) when all its records are; a row whose first records are sent and the
-- rest not (a bundle ended inside it) keeps sent = 0 and sent_upto = the last sent seq, so its
-- first unsent seq is MAX(seq, sent_upto + 1). Rows stay clustered per device in seq order:
-- pruning a device's forwarded rows frees whole pages.
CREATE TABLE IF NOT EXISTS devices (
    device_id   TEXT    NOT NULL,
    kind        INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL,
    PRIMARY KEY (device_id, kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS records (
    device_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,       -- the first seq of the row
    kind         INTEGER NOT NULL,       -- 1 observation, 2 alarm (see outbox::Stream)
    n            INTEGER NOT NULL DEFAULT 1,
    sent         INTEGER NOT NULL DEFAULT 0,
    sent_upto    INTEGER NOT NULL DEFAULT 0,
    bed          TEXT    NOT NULL,
    received_us  INTEGER NOT NULL,       -- receive time of the row's first record
    control_id   TEXT,                   -- observations: the message's control id and digest,
    digest       INTEGER,                --   to recognise a sender's retry after a restart
    payload      BLOB    NOT NULL,
    PRIMARY KEY (kind, device_id, seq)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS records_unsent ON records (kind, device_id, seq) WHERE sent = 0;

-- Written by gateways before retries were recognised from records.control_id and digest (the
-- store module's Dedup): still looked up while it has rows, which pruning deletes with the
-- readings they name. Nothing new is written to it.
CREATE TABLE IF NOT EXISTS messages (
    device_id    TEXT    NOT NULL,
    control_id   TEXT    NOT NULL,
    digest       INTEGER NOT NULL,
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    received_us  INTEGER NOT NULL,
    PRIMARY KEY (device_id, control_id)
) WITHOUT ROWID;

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

-- The outbox's audit stream: how far the gateway's audit trail (table audit_log, created and
-- appended to by the gateway's audit module, read here in place, never copied or pruned) has
-- reached Kafka. One row (id 1): every entry with seq <= upto was delivered. See db/audit.rs.
CREATE TABLE IF NOT EXISTS audit_forwarded (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);

-- The trend rollup (db/trends.rs): per bed, MDC code and minute of the readings' trusted time
-- (device time unless untrusted, else receive time), the count, min, max and sum of the valid
-- numeric values and the last one (with its time); `skipped` counts readings of that minute
-- without a usable value (absent, not available, invalid, test). Written by the store writer
-- inside its group commits, a few seconds of readings merged per row and statement; rows older
-- than the trend retention are deleted by the writer (bounded, once a minute). The trend
-- query reads it; records are never decoded for a trend.
CREATE TABLE IF NOT EXISTS trend_minutes (
    bed      TEXT    NOT NULL,
    mdc      INTEGER NOT NULL,
    minute   INTEGER NOT NULL,       -- Unix time / 60 (UTC minutes)
    n        INTEGER NOT NULL,       -- valid values aggregated
    vmin     REAL,                   -- NULL while n = 0
    vmax     REAL,
    vsum     REAL,
    vlast    REAL,
    last_us  INTEGER,                -- trusted time of vlast
    skipped  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bed, mdc, minute)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS trend_minutes_by_minute ON trend_minutes (minute);

-- How far each device's observations are in trend_minutes: every seq <= upto is. Written with
-- the rows, so after a crash the writer rolls up the records above it (db/trends.rs).
CREATE TABLE IF NOT EXISTS trend_rolled (
    device_id TEXT PRIMARY KEY,
    upto      INTEGER NOT NULL
) WITHOUT ROWID;
