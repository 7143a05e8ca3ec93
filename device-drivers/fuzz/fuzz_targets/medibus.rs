//! Dräger MEDIBUS: frame codec, payload parsers, the gateway session and the device responder.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use icu_drivers::medibus::{
    medibus_to_observations, Action, DeviceIdentity, MedibusCodec, MedibusData, MedibusDevice,
    MedibusEvent, MedibusLimits, MedibusSession, SessionTimings,
};
use icu_drivers::terminology::Terminology;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let terminology = Terminology::builtin();
    let mut codec = MedibusCodec::new(1024);
    let mut buf = BytesMut::from(data);
    let mut events = Vec::new();
    while let Ok(Some(e)) = codec.decode(&mut buf) {
        events.push(e);
    }
    while let Ok(Some(e)) = codec.decode_eof(&mut buf) {
        events.push(e);
    }
    let t0 = Instant::now();
    let mut session = MedibusSession::new(SessionTimings::default());
    let mut device = MedibusDevice::new(DeviceIdentity {
        device_id: "0161".into(),
        name: "Fuzz".into(),
        revision: "01.00".into(),
    });
    let mut limits = MedibusLimits::default();
    for (i, event) in events.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 700);
        let _ = session.on_tick(now);
        if let MedibusEvent::Frame(frame) = event {
            let _ = device.on_frame(frame);
        }
        for action in session.on_event(event, now) {
            match action {
                Action::Data(MedibusData::LowLimits(v)) => limits.update_low(&v),
                Action::Data(MedibusData::HighLimits(v)) => limits.update_high(&v),
                Action::Data(MedibusData::Measured(v)) => {
                    let _ = medibus_to_observations(&v, &limits, None, 0, &terminology);
                }
                _ => {}
            }
        }
    }
});
