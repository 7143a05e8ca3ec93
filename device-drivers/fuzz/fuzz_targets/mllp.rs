//! MLLP framing: arbitrary bytes, fed in two chunks, through the decode loop.
#![no_main]

use bytes::BytesMut;
use icu_drivers::mllp::MllpCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = MllpCodec::new(4096);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::new();
    for part in [&data[..split], &data[split..]] {
        buf.extend_from_slice(part);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
});
