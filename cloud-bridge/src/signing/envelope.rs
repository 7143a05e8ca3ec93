//! The signed envelope of a Kafka record (`icu-signature-alg: ed25519-envelope-v1`).
//!
//! Owns: [`envelope`], the exact bytes the gateway signs for a record, and the list of
//! [`COVERED`] headers.
//! Guarantees:
//! - the signature covers the value *and* what a consumer accounts or routes by: the record key
//!   and the headers in [`COVERED`] (stream, content type, schema version, gateway, device, seq range, bed,
//!   patient, key id, and the CloudEvents attributes). Editing any of them in flight, or moving a
//!   value under other headers, fails verification;
//! - the value enters through its SHA-256 (one pass, hardware-accelerated where the CPU has it)
//!   and the ed25519 signature is over the short envelope, so signing costs one SHA-256 pass over
//!   the value instead of plain ed25519's two SHA-512 passes;
//! - the bytes are plain UTF-8 lines any language builds from the record as received (nothing
//!   needs the gateway's code): the line `icu-envelope-v1`, then `key=<record key>`, then one
//!   line per covered header in [`COVERED`]'s order, `name=value` when the header is present or
//!   `name` alone when it is absent, then `value-sha256=<64 lowercase hex digits>`; every line ends
//!   with `\n` (LF); in the key and header values `%`, LF and CR are written `%25`, `%0A` and
//!   `%0D`, so no value can forge a line;
//! - a header repeated on the record is read as its last value (as the consumers do).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::headers;

/// The first line of the envelope; also names the scheme.
pub const ENVELOPE_V1: &str = "icu-envelope-v1";

/// The headers the envelope covers, in the order they are written.
pub const COVERED: [&str; 15] = [
    headers::STREAM,
    headers::CONTENT_TYPE,
    headers::SCHEMA_VERSION,
    headers::GATEWAY_ID,
    headers::DEVICE_ID,
    headers::SEQ_FIRST,
    headers::SEQ_LAST,
    headers::BED,
    headers::PATIENT_ID,
    headers::KEY_ID,
    headers::CE_SPECVERSION,
    headers::CE_ID,
    headers::CE_SOURCE,
    headers::CE_TYPE,
    headers::CE_TIME,
];

/// The envelope bytes of a record: its key (`None`: a record without a key, written as the line
/// `key`), the value of each covered header (`header(name)`, `None` when absent) and the value.
pub fn envelope<'a>(
    record_key: Option<&str>,
    header: impl Fn(&str) -> Option<&'a str>,
    value: &[u8],
) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    out.push_str(ENVELOPE_V1);
    out.push('\n');
    field(&mut out, "key", record_key);
    for name in COVERED {
        field(&mut out, name, header(name));
    }
    out.push_str("value-sha256=");
    for byte in Sha256::digest(value) {
        let _ = write!(out, "{byte:02x}");
    }
    out.push('\n');
    out.into_bytes()
}

fn field(out: &mut String, name: &str, value: Option<&str>) {
    out.push_str(name);
    if let Some(value) = value {
        out.push('=');
        for c in value.chars() {
            match c {
                '%' => out.push_str("%25"),
                '\n' => out.push_str("%0A"),
                '\r' => out.push_str("%0D"),
                c => out.push(c),
            }
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The documented bytes, spelled out: what a consumer in another language reproduces.
    #[test]
    fn envelope_bytes_are_the_documented_lines() {
        let h = headers(&[
            (headers::STREAM, "observations"),
            (headers::CONTENT_TYPE, "application/fhir+json"),
            (headers::SCHEMA_VERSION, "fhir-r4/icu-gateway-2"),
            (headers::GATEWAY_ID, "icu-north"),
            (headers::DEVICE_ID, "mon-01"),
            (headers::SEQ_FIRST, "7"),
            (headers::SEQ_LAST, "9"),
            (headers::BED, "bed-1"),
            (headers::KEY_ID, "0123456789abcdef"),
            (headers::CE_SPECVERSION, "1.0"),
            (headers::CE_ID, "icu-north:observations:mon-01:7-9"),
            (headers::CE_SOURCE, "urn:icu-gateway:icu-north:mon-01"),
            (headers::CE_TYPE, "org.icu-gateway.observations.v1"),
            (headers::CE_TIME, "2026-12-06T10:00:00.000001Z"),
        ]);
        let bytes = envelope(Some("mon-01"), |n| h.get(n).map(String::as_str), b"abc");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "icu-envelope-v1\n\
             key=mon-01\n\
             icu-stream=observations\n\
             content-type=application/fhir+json\n\
             icu-schema-version=fhir-r4/icu-gateway-2\n\
             icu-gateway-id=icu-north\n\
             icu-device-id=mon-01\n\
             icu-seq-first=7\n\
             icu-seq-last=9\n\
             icu-bed=bed-1\n\
             icu-patient-id\n\
             icu-key-id=0123456789abcdef\n\
             ce_specversion=1.0\n\
             ce_id=icu-north:observations:mon-01:7-9\n\
             ce_source=urn:icu-gateway:icu-north:mon-01\n\
             ce_type=org.icu-gateway.observations.v1\n\
             ce_time=2026-12-06T10:00:00.000001Z\n\
             value-sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        );
    }

    #[test]
    fn a_value_cannot_forge_a_line_and_absent_differs_from_empty() {
        let forged = headers(&[(headers::PATIENT_ID, "p1\nicu-seq-first=1")]);
        let bytes = envelope(None, |n| forged.get(n).map(String::as_str), b"");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("icu-patient-id=p1%0Aicu-seq-first=1\n"),
            "{text}"
        );
        assert!(text.contains("\nkey\n"), "{text}");
        let empty = headers(&[(headers::PATIENT_ID, "")]);
        let absent = headers(&[]);
        assert_ne!(
            envelope(None, |n| empty.get(n).map(String::as_str), b""),
            envelope(None, |n| absent.get(n).map(String::as_str), b"")
        );
        let pct = headers(&[(headers::BED, "%0A")]);
        let text =
            String::from_utf8(envelope(None, |n| pct.get(n).map(String::as_str), b"")).unwrap();
        assert!(text.contains("icu-bed=%250A\n"), "{text}");
    }

    #[test]
    fn every_covered_header_and_the_value_change_the_envelope() {
        let base: BTreeMap<String, String> = COVERED
            .iter()
            .map(|n| (n.to_string(), "x".to_string()))
            .collect();
        let original = envelope(Some("k"), |n| base.get(n).map(String::as_str), b"v");
        for name in COVERED {
            let mut edited = base.clone();
            edited.insert(name.to_string(), "y".into());
            assert_ne!(
                envelope(Some("k"), |n| edited.get(n).map(String::as_str), b"v"),
                original,
                "{name} is not covered"
            );
        }
        assert_ne!(
            envelope(Some("k2"), |n| base.get(n).map(String::as_str), b"v"),
            original
        );
        assert_ne!(
            envelope(Some("k"), |n| base.get(n).map(String::as_str), b"w"),
            original
        );
    }
}
