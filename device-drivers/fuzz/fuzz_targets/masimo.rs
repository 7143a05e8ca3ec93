//! Masimo ASCII 1: line codec, record parsing and mapping to observations.
#![no_main]

use bytes::BytesMut;
use icu_drivers::masimo::{to_observations, MasimoCodec, MasimoEvent};
use icu_drivers::terminology::Terminology;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let terminology = Terminology::builtin();
    let mut codec = MasimoCodec::new(512, 60);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for part in [&data[..split], &data[split..]] {
        buf.extend_from_slice(part);
        while let Ok(Some(e)) = codec.decode(&mut buf) {
            events.push(e);
        }
    }
    while let Ok(Some(e)) = codec.decode_eof(&mut buf) {
        events.push(e);
    }
    for e in events {
        if let MasimoEvent::Line(record) = e {
            let _ = to_observations(&record, 0, &terminology);
            let _ = record.alarms();
            let _ = record.technical_conditions();
        }
    }
});
