//! A simulated Dräger ventilator's MEDIBUS side, pure (no port, no clock): it answers the
//! gateway's slow protocol through [`MedibusDevice`] and, once the gateway has configured and
//! enabled realtime transmission, sends realtime curves (airway pressure, flow, volume since
//! the start of inspiration) at their sample interval, interleaved on the same line.
//!
//! The curves are a pressure-controlled breath at the patient's respiratory rate (I:E 1:2,
//! PEEP 5 mbar, inspiratory pressure 17 mbar above PEEP, tidal volume 480 mL, exponential
//! filling and emptying), so flow is the derivative of volume and pressure leads flow. Each
//! sample is quantised to the 12-bit bin of the offered scale; [`VentilatorSim::bin`] gives
//! the exact bin of any sample, so a test can check the gateway's decoding bit for bit.
//! Offer values (8 ms interval, the scales) are the simulator's, not a real Evita's.

use bytes::BytesMut;
use icu_drivers::medibus::{
    encode_frame, BreathPhase, DeviceIdentity, MedibusCodec, MedibusDevice, MedibusEvent,
    RealtimeConfig, RealtimeScale, SampleByteOrder,
};
use tokio_util::codec::Decoder;

/// Realtime codes the simulated ventilator offers.
pub const AIRWAY_PRESSURE: u8 = 0x00;
pub const FLOW: u8 = 0x01;
pub const VOLUME: u8 = 0x03;
/// Sample interval of every offered curve (125 Hz).
pub const INTERVAL_US: u32 = 8000;
/// Frames sent at most per call of [`VentilatorSim::realtime_until`] (bounds a late caller).
pub const MAX_FRAMES_PER_CALL: u64 = 1000;

/// The breath the curves draw: pressures in mbar, volume in mL, time constants in seconds.
struct Breath {
    peep: f64,
    p_insp: f64,
    tidal_ml: f64,
    tau_insp: f64,
    tau_exp: f64,
    tau_pressure: f64,
}

const BREATH: Breath = Breath {
    peep: 5.0,
    p_insp: 17.0,
    tidal_ml: 480.0,
    tau_insp: 0.25,
    tau_exp: 0.4,
    tau_pressure: 0.05,
};

/// The curves it offers: airway pressure (mbar), flow (L/min), volume (mL).
pub fn offer() -> Vec<RealtimeConfig> {
    let cfg = |code, min, max| RealtimeConfig {
        code,
        interval_us: INTERVAL_US,
        scale: RealtimeScale {
            min,
            max,
            maxbin: 4095,
        },
    };
    vec![
        cfg(AIRWAY_PRESSURE, -20.0, 80.0),
        cfg(FLOW, -150.0, 150.0),
        cfg(VOLUME, 0.0, 2000.0),
    ]
}

/// The value of curve `code` at `t_s` seconds into a breathing pattern of `rr` breaths/min.
pub fn curve_value(code: u8, t_s: f64, rr: f64) -> f64 {
    let period = 60.0 / rr.max(1.0);
    let ti = period / 3.0;
    let t = t_s.rem_euclid(period);
    let fill = 1.0 - (-ti / BREATH.tau_insp).exp();
    let (volume, flow_ml_s, pressure) = if t < ti {
        let v = BREATH.tidal_ml * (1.0 - (-t / BREATH.tau_insp).exp()) / fill;
        let f = BREATH.tidal_ml / fill * (-t / BREATH.tau_insp).exp() / BREATH.tau_insp;
        (
            v,
            f,
            BREATH.peep + BREATH.p_insp * (1.0 - (-t / BREATH.tau_pressure).exp()),
        )
    } else {
        let te = t - ti;
        let v = BREATH.tidal_ml * (-te / BREATH.tau_exp).exp();
        let f = -BREATH.tidal_ml / BREATH.tau_exp * (-te / BREATH.tau_exp).exp();
        let p_end = BREATH.peep + BREATH.p_insp * (1.0 - (-ti / BREATH.tau_pressure).exp());
        (
            v,
            f,
            BREATH.peep + (p_end - BREATH.peep) * (-te / BREATH.tau_pressure).exp(),
        )
    };
    match code {
        AIRWAY_PRESSURE => pressure,
        FLOW => flow_ml_s * 60.0 / 1000.0,
        _ => volume,
    }
}

/// The simulated ventilator's line protocol (see module docs).
pub struct VentilatorSim {
    pub device: MedibusDevice,
    codec: MedibusCodec,
    buf: BytesMut,
    order: SampleByteOrder,
    /// Respiratory rate of the curves, breaths/min.
    pub resp_rate: f64,
    /// Line time (µs) of sample 0 while streaming.
    origin_us: Option<u64>,
    next_sample: u64,
    /// Measured-data (`$`) answers sent.
    pub measured_answers: u64,
}

impl VentilatorSim {
    pub fn new(identity: DeviceIdentity, order: SampleByteOrder) -> Self {
        let mut device = MedibusDevice::new(identity);
        device.realtime_offer = offer();
        Self {
            device,
            codec: MedibusCodec::default().with_realtime(order),
            buf: BytesMut::new(),
            order,
            resp_rate: 14.0,
            origin_us: None,
            next_sample: 0,
            measured_answers: 0,
        }
    }

    /// Forgets the line (a new port): partial frames and the realtime set-up.
    pub fn reset_line(&mut self) {
        self.codec = MedibusCodec::default().with_realtime(self.order);
        self.buf.clear();
        self.origin_us = None;
    }

    /// What the gateway wrote; returns the answers to write back.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Ok(Some(event)) = self.codec.decode(&mut self.buf) {
            if let MedibusEvent::Frame(frame) = event {
                if frame.code == b'$' {
                    self.measured_answers += 1;
                }
                for answer in self.device.on_frame(&frame) {
                    out.extend(answer);
                }
            }
        }
        for f in self.codec.take_realtime() {
            self.device.on_realtime_frame(&f);
        }
        out
    }

    /// The bin of sample `k` of curve `code` (what the line carries).
    pub fn bin(&self, code: u8, k: u64) -> u16 {
        let Some(c) = self.device.realtime_offer.iter().find(|c| c.code == code) else {
            return 0;
        };
        let t_s = k as f64 * f64::from(c.interval_us) / 1e6;
        let v = curve_value(code, t_s, self.resp_rate);
        let s = c.scale;
        let bin = ((v - s.min) / (s.max - s.min) * f64::from(s.maxbin)).round();
        bin.clamp(0.0, f64::from(s.maxbin)) as u16
    }

    /// Realtime frames due up to line time `now_us` (one per sample interval since streaming
    /// began), at most [`MAX_FRAMES_PER_CALL`]. Nothing while no stream is enabled.
    pub fn realtime_until(&mut self, now_us: u64) -> Vec<u8> {
        let streams = self.device.realtime_streams();
        if streams.is_empty() {
            self.origin_us = None;
            return Vec::new();
        }
        let origin = *self.origin_us.get_or_insert_with(|| {
            self.next_sample = 0;
            now_us
        });
        let due = (now_us.saturating_sub(origin) / u64::from(INTERVAL_US) + 1)
            .min(self.next_sample + MAX_FRAMES_PER_CALL);
        let mut out = Vec::new();
        let period = 60.0 / self.resp_rate.max(1.0);
        let per_breath = (period * 1e6 / f64::from(INTERVAL_US)).round().max(3.0) as u64;
        while self.next_sample < due {
            let k = self.next_sample;
            let mut mask = 0u16;
            let mut bins = Vec::with_capacity(streams.len());
            for (stream, cfg) in &streams {
                mask |= 1 << (stream - 1);
                bins.push((*stream, self.bin(cfg.code, k)));
            }
            bins.sort_by_key(|(s, _)| *s);
            let bins: Vec<u16> = bins.into_iter().map(|(_, b)| b).collect();
            let phase = match k % per_breath {
                0 => Some(BreathPhase::Inspiration),
                x if x == per_breath / 3 => Some(BreathPhase::Expiration),
                _ => None,
            };
            out.extend(encode_frame(mask, &bins, phase, self.order));
            self.next_sample += 1;
        }
        out
    }

    /// Samples sent so far while streaming.
    pub fn samples_sent(&self) -> u64 {
        self.next_sample
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use icu_drivers::medibus::{
        Action, MedibusSession, RealtimeEvent, RealtimeSettings, SessionTimings,
    };

    use super::*;

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            device_id: "0161".into(),
            name: "EvitaXL".into(),
            revision: "04.03".into(),
        }
    }

    /// Samples per realtime code, in arrival order.
    type Curves = Vec<(u8, Vec<Option<u16>>)>;

    /// The gateway's session and codec against the simulated ventilator for `ms` of line
    /// time, realtime bytes cut into the middle of slow answers; returns the curves per code.
    fn run(order: SampleByteOrder, ms: u64) -> (VentilatorSim, Curves) {
        let mut sim = VentilatorSim::new(identity(), order);
        sim.device.measured = vec![icu_drivers::medibus::MedibusValue::number(0x7D, 22.0)];
        let mut settings = RealtimeSettings::ventilator();
        settings.run_len = 50;
        let mut session = MedibusSession::with_realtime(SessionTimings::default(), settings);
        let mut codec = MedibusCodec::default().with_realtime(order);
        let mut buf = BytesMut::new();
        let t0 = Instant::now();
        let mut curves: Curves = Vec::new();
        let mut measured = 0;
        let mut pending = Vec::new();
        let mut collect = |actions: Vec<Action>, pending: &mut Vec<u8>, measured: &mut u32| {
            for a in actions {
                match a {
                    Action::Send(bytes) => pending.extend(bytes),
                    Action::Data(icu_drivers::medibus::MedibusData::Measured(_)) => *measured += 1,
                    Action::Realtime(RealtimeEvent::Waveform(run)) => {
                        match curves.iter_mut().find(|(c, _)| *c == run.code) {
                            Some((_, s)) => s.extend(run.samples),
                            None => curves.push((run.code, run.samples)),
                        }
                    }
                    _ => {}
                }
            }
        };
        for step in 0..=ms / 4 {
            let now = t0 + Duration::from_millis(step * 4);
            collect(session.on_tick(now), &mut pending, &mut measured);
            let answers = sim.on_bytes(&std::mem::take(&mut pending));
            let fast = sim.realtime_until(step * 4000);
            // Realtime bytes in the middle of the slow answers, as a device may send them.
            let cut = answers.len() / 2;
            let mut line = answers[..cut].to_vec();
            line.extend(&fast);
            line.extend(&answers[cut..]);
            buf.extend_from_slice(&line);
            while let Some(e) = codec.decode(&mut buf).unwrap() {
                collect(session.on_event(&e, now), &mut pending, &mut measured);
            }
            let frames = codec.take_realtime();
            collect(
                session.on_realtime(&frames, now),
                &mut pending,
                &mut measured,
            );
        }
        collect(session.flush_realtime(), &mut pending, &mut measured);
        assert!(measured > 0, "the numerics flowed beside the curves");
        (sim, curves)
    }

    #[test]
    fn gateway_decodes_the_simulated_curves_bit_exact() {
        for order in [SampleByteOrder::LowFirst, SampleByteOrder::HighFirst] {
            let (sim, curves) = run(order, 3000);
            let codes: Vec<u8> = curves.iter().map(|(c, _)| *c).collect();
            assert_eq!(codes, [AIRWAY_PRESSURE, FLOW, VOLUME]);
            for (code, samples) in &curves {
                // Every sample sent arrived (the last frame waits for the next sync byte).
                assert!(samples.len() as u64 + 1 >= sim.samples_sent(), "{code}");
                assert!(samples.len() > 300, "{code}: {}", samples.len());
                for (k, s) in samples.iter().enumerate() {
                    assert_eq!(*s, Some(sim.bin(*code, k as u64)), "code {code} sample {k}");
                }
            }
            // The curves move: pressure spans PEEP to the inspiratory pressure.
            let p: Vec<f64> = curves[0]
                .1
                .iter()
                .flatten()
                .map(|&b| offer()[0].scale.value(b))
                .collect();
            let (lo, hi) = p
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(lo < 6.0 && hi > 20.0, "{lo}..{hi}");
        }
    }

    #[test]
    fn curves_are_physiological() {
        let rr = 15.0;
        // Volume returns near zero at the end of expiration, and peaks at the tidal volume.
        let v_end = curve_value(VOLUME, 60.0 / rr - 0.001, rr);
        let v_peak = curve_value(VOLUME, 60.0 / rr / 3.0 - 0.001, rr);
        assert!(v_end < 30.0, "{v_end}");
        assert!((v_peak - BREATH.tidal_ml).abs() < 1.0, "{v_peak}");
        assert!(curve_value(FLOW, 0.01, rr) > 0.0);
        assert!(curve_value(FLOW, 60.0 / rr / 3.0 + 0.1, rr) < 0.0);
    }
}
