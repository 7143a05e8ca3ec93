//! The canonical record types of the ICU edge gateway (protobuf package `icu.v1`).
//!
//! Owns: the `.proto` schema in `proto/icu/v1/icu.proto` and the prost types generated from it.
//! Guarantees: the build needs no system `protoc` (schemas are compiled with protox), and field
//! numbers are only ever added, so stored records stay readable across versions.

/// Generated types of package `icu.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/icu.v1.rs"));
}

pub use prost::Message;

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message;

    #[test]
    fn stored_record_round_trips() {
        let rec = StoredRecord {
            gateway_id: "gw1".into(),
            device_id: "mon-1".into(),
            seq: 7,
            body: Some(stored_record::Body::Observation(Observation {
                device_id: "mon-1".into(),
                seq: 7,
                mdc_code: 150456,
                value: Some(97.0),
                unit_ucum: "%".into(),
                ..Default::default()
            })),
            traceparent: String::new(),
        };
        let bytes = rec.encode_to_vec();
        let back = StoredRecord::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, rec);
        match back.body {
            Some(stored_record::Body::Observation(o)) => assert_eq!(o.value, Some(97.0)),
            other => panic!("unexpected body {other:?}"),
        }
    }
}
