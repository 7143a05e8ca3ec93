//! The protobuf topic schemas (`protos/schemas/<topic>.proto`, read by the broker's schema
//! registry) are the canonical `icu.v1` messages, field for field: what the gateway encodes
//! with prost is what the registry validates and what consumers decode.

use std::collections::BTreeMap;

use protox::prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

fn pool(file: &str, include: &str) -> DescriptorPool {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(include);
    let fds = protox::compile([file], [dir]).unwrap_or_else(|e| panic!("{file}: {e}"));
    DescriptorPool::from_file_descriptor_set(fds).expect("descriptor pool")
}

/// Name → (number, kind, cardinality, proto3 optional) of a message's fields; message and enum
/// types by their simple name (the packages differ on purpose).
fn shape(m: &MessageDescriptor) -> BTreeMap<String, (u32, String, String, bool)> {
    let kind = |f: &FieldDescriptor| match f.kind() {
        Kind::Message(m) => format!("message {}", m.name()),
        Kind::Enum(e) => {
            let values: Vec<String> = e
                .values()
                .map(|v| format!("{}={}", v.name(), v.number()))
                .collect();
            format!("enum {} {{{}}}", e.name(), values.join(","))
        }
        other => format!("{other:?}"),
    };
    m.fields()
        .map(|f| {
            (
                f.name().to_owned(),
                (
                    f.number(),
                    kind(&f),
                    format!("{:?}", f.cardinality()),
                    f.field_descriptor_proto().proto3_optional(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_observations_topic_schema_is_the_canonical_messages() {
    let canonical = pool("icu/v1/icu.proto", "proto");
    let topic = pool("icu.observations.pb.proto", "schemas");
    let pairs = [
        ("icu.v1.StreamKey", "icu.schema.observations.v1.Key"),
        (
            "icu.v1.ObservationBatch",
            "icu.schema.observations.v1.Value",
        ),
        (
            "icu.v1.Observation",
            "icu.schema.observations.v1.Observation",
        ),
    ];
    for (ours, theirs) in pairs {
        let a = canonical.get_message_by_name(ours).expect(ours);
        let b = topic.get_message_by_name(theirs).expect(theirs);
        assert_eq!(shape(&a), shape(&b), "{theirs} differs from {ours}");
        assert!(!shape(&a).is_empty());
    }
    // The registry looks the messages up by these names.
    for name in ["Key", "Value"] {
        assert!(topic
            .all_messages()
            .any(|m| m.name() == name && m.package_name() == "icu.schema.observations.v1"));
    }
}
