-- Census schema of the ICU edge gateway: bed -> patient over time, from the ADT feed.
-- Lives in the store's database file (WAL); every statement is idempotent.

-- Every ADT message applied or refused, for audit. `accepted` = 0: refused, nothing changed.
CREATE TABLE IF NOT EXISTS adt_events (
    id              INTEGER PRIMARY KEY,
    received_us     INTEGER NOT NULL,
    sender          TEXT    NOT NULL,      -- MSH-3|MSH-4 as written
    message_id      TEXT    NOT NULL,      -- MSH-10
    event           TEXT    NOT NULL,      -- A01, A02, ...
    patient_id      TEXT    NOT NULL,
    event_time_us   INTEGER NOT NULL,      -- EVN-6, else EVN-2, else MSH-7, else received_us
    location        TEXT,                  -- PV1-3 as written
    prior_location  TEXT,                  -- PV1-6 as written
    bed             TEXT,                  -- configured bed PV1-3 maps to, if any
    accepted        INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,      -- short outcome kind, e.g. admitted, rejected
    detail          TEXT    NOT NULL,      -- the log line / reason
    peer            TEXT                   -- address it came from (ip:port), if known; added to
                                           -- older files when opened (census/mod.rs)
);

CREATE INDEX IF NOT EXISTS adt_events_message ON adt_events (sender, message_id);

-- Demographics, last written by the ADT event with the latest event time.
CREATE TABLE IF NOT EXISTS patients (
    patient_id  TEXT    PRIMARY KEY,
    family      TEXT    NOT NULL,
    given       TEXT    NOT NULL,
    birth_date  TEXT    NOT NULL,
    sex         TEXT    NOT NULL,
    updated_us  INTEGER NOT NULL
) WITHOUT ROWID;

-- The timeline: a patient is in `bed` over [start_us, end_us); end_us NULL while the stay is open.
-- Stays of one bed never overlap, nor do stays of one patient. A cancelled stay (A11/A12) is
-- kept with `cancelled_by` set and ignored.
CREATE TABLE IF NOT EXISTS stays (
    id              INTEGER PRIMARY KEY,
    patient_id      TEXT    NOT NULL,
    bed             TEXT    NOT NULL,
    start_us        INTEGER NOT NULL,
    end_us          INTEGER,
    visit           TEXT,
    source_event    TEXT    NOT NULL,      -- the event that opened the stay
    message_id      TEXT    NOT NULL,      -- its MSH-10
    opened_by       INTEGER NOT NULL REFERENCES adt_events (id),
    end_event       TEXT,                  -- the event that closed it
    end_message_id  TEXT,
    closed_by       INTEGER REFERENCES adt_events (id),
    cancelled_by    INTEGER REFERENCES adt_events (id)
);

CREATE INDEX IF NOT EXISTS stays_bed ON stays (bed, start_us);
CREATE INDEX IF NOT EXISTS stays_patient ON stays (patient_id, start_us);
