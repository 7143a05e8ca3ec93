//! MQTT devices (infusion pumps, wearables): topic scheme, payload codec and thin transport.
//!
//! Owns: the observation topic scheme ([`ObsTopic`]), the JSON and protobuf payload decoder
//! ([`decode_payload`], pure: no I/O, no clock), the subscriber with manual acknowledgements
//! ([`MqttSubscriber`], on rumqttc) and the publisher helper of the simulator
//! ([`publish_observations`]).
//!
//! # Topics
//!
//! A device publishes its observations to
//!
//! ```text
//! icu/<gateway_id>/bed/<bed_id>/device/<device_id>/obs/json   JSON payload
//! icu/<gateway_id>/bed/<bed_id>/device/<device_id>/obs/pb     protobuf payload (MqttBatch)
//! ```
//!
//! The last level chooses the encoding; any other last level (or a bare `.../obs`) is refused.
//! The gateway subscribes (QoS 1) to `icu/<gateway_id>/bed/+/device/+/obs/#`
//! ([`subscription_filter`]). Ids must be non-empty and contain no `/`, `+`, `#` or NUL.
//! [`ObsTopic::parse`] checks the shape and the gateway id; the gateway then checks that
//! `<device_id>` is a configured device (and `<bed_id>` its bed) before storing anything.
//! Devices should publish with QoS 1: a QoS 0 message is never redelivered.
//!
//! # JSON payload (`.../obs/json`)
//!
//! ```json
//! {
//!   "device_time": "2024-05-01T12:00:00Z",
//!   "msg_id": "pump-7-000123",
//!   "observations": [
//!     { "mdc_code": 157784, "value": 12.5, "unit": "mL/h", "status": "valid",
//!       "containment_id": "1.1.1.1", "time": "2024-05-01T12:00:00.250Z" }
//!   ]
//! }
//! ```
//!
//! - `device_time` (optional, RFC 3339): the device time of every observation without its own
//!   `time`.
//! - `msg_id` (optional, at most 256 bytes): the device's message id, kept as
//!   `source_message_id` of each observation so redeliveries can be recognised.
//! - `observations` (required, may be empty): `mdc_code` (required, IEEE 11073-10101 code that
//!   the gateway terminology table knows), `value` (optional number), `unit` (optional UCUM
//!   code; the table's default unit when absent), `status` (optional: `valid`,
//!   `not-available`, `invalid`, `corrected`, `test`), `containment_id` (optional), `time`
//!   (optional, RFC 3339).
//! - Unknown fields are refused, so a misspelt field is an error and not a silently missing
//!   value.
//!
//! # Protobuf payload (`.../obs/pb`)
//!
//! One [`MqttBatch`]: field 1 `repeated icu.v1.Observation observations`, field 2
//! `string msg_id`, field 3 `repeated icu.v1.WaveformSegment waveforms` (curves, e.g. a
//! wearable's ECG; checked like PCD-01 waveforms: a sample rate above 0 and within bounds,
//! `sample_count` equal to the samples plus the gap positions, at most 15,000 positions per
//! segment; see `waveform.rs`). These numbers are the wire contract; they are only ever added
//! to. A payload with one bad segment is refused whole, like one bad observation.
//!
//! # Normalisation (both formats)
//!
//! - All or nothing: one bad observation refuses the whole payload, with an error naming the
//!   place (`observations[2].mdc_code`, or JSON line, column and byte offset) and the reason.
//! - A payload above `max_payload_bytes` (default 256 KiB) is refused before parsing.
//! - An MDC code not in the terminology table is refused, naming the code.
//! - NaN and infinite values (and alarm limits) are refused.
//! - A missing value is kept missing, never zero: with no status, or status valid or corrected,
//!   it gets status NOT_AVAILABLE. A value with no status is VALID.
//! - Without a unit the table's default UCUM and MDC unit are used; `mdc_refid` and `loinc`
//!   come from the table when the payload leaves them empty.
//! - `device_id`, `bed`, `seq` and `clock_synced` are cleared (identity comes from the topic and
//!   the config, never from the payload); `receive_time_us` is the caller's; `source_row` is the
//!   1-based position in the batch.
//!
//! # Acknowledgement
//!
//! The subscriber connects with a persistent session (clean session off, stable client id) and
//! manual acknowledgements. Each PUBLISH is handed to the caller with an [`AckHandle`]; the
//! PUBACK is sent only after the caller reports [`Disposition::Stored`] (committed) or
//! [`Disposition::Rejected`] (kept as a dead letter), in arrival order. A message whose
//! disposition is `NotStored`, or is still pending when the connection drops, is not
//! acknowledged and the broker redelivers it (with the DUP flag) on the next connection, so
//! the gateway may see a message twice ([`MqttMessage::dup`], and the device's `msg_id`, tell
//! it so). An acknowledgement is never sent on a connection other than the one that delivered
//! the message (a packet id means nothing on a new connection); the copy delivered on the new
//! connection is acknowledged instead (counted in `stale_acks`).
//!
//! A broker resends an unacknowledged message only to a new session, and stops delivering once
//! its in-flight window for this client is full, so `NotStored` is for a caller that is going
//! away: a caller that can store the message later should hold it and complete its handle then
//! (the gateway does: a message its store refused is retried until stored, see
//! `icu_gateway::mqtt`).
//!
//! After a dropped connection the subscriber reconnects with exponential backoff (100 ms,
//! doubling, capped at `reconnect_max_backoff_ms`) and subscribes again after every CONNACK.
//! Counters ([`MqttCounters`]) count messages, acks, rejects, store failures, reconnections and
//! connection errors.
//!
//! Limits: a packet bigger than `max_payload_bytes + 64 KiB` drops the connection (rumqttc
//! cannot skip it), so set the broker's `message_size_limit`. A consumer slower than the
//! deliveries channel stops reading from the broker (back-pressure); if it stalls longer than
//! 1.5 × `keep_alive_s` the broker drops the connection and redelivers later.
//!
//! # TLS and credentials
//!
//! `tls = "required"` connects over TLS (rustls, ring provider) trusting only the CA bundle of
//! `ca_file`, checking the certificate's name against `broker_host`, and presenting
//! `client_cert_file`/`client_key_file` when set (mutual TLS). The password comes from
//! `password_file` (first line) or `password_env`, never from the config file; a secret file
//! that group or others may read is refused. A failed handshake or a refused CONNACK is
//! classified ([`tls::explain`]) into `tls_failed` / `auth_failed` with the setting to fix,
//! counted ([`MqttCounters::tls_failures`], [`MqttCounters::auth_failures`]) and kept as the
//! subscriber's [`MqttLink`]; the subscriber keeps retrying with its backoff.

mod codec;
mod config;
pub mod tls;
mod topic;
mod transport;
mod waveform;

pub use codec::{
    decode_payload, encode_payload, MqttBatch, MqttPayloadError, DEFAULT_MAX_PAYLOAD_BYTES,
    JSON_STATUSES, MAX_MSG_ID_BYTES,
};
pub use config::{
    default_broker_host, default_broker_port, default_client_id, default_keep_alive_s,
    default_max_payload_bytes, default_reconnect_max_backoff_ms, MqttConfig, MqttConfigError,
    MqttTls,
};
/// The rumqttc version this transport is built on, re-exported for publishers.
pub use rumqttc;
pub use topic::{subscription_filter, ObsTopic, PayloadFormat, TopicError};
pub use transport::{
    mqtt_options, publish_observations, AckHandle, Delivery, Disposition, MqttCounters,
    MqttCountersSnapshot, MqttLink, MqttMessage, MqttSubscriber, INITIAL_BACKOFF,
};

#[cfg(test)]
mod tests;
