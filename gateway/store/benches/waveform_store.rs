//! Bytes stored per waveform sample through the real writer into a SQLite file: the simulated
//! 30-bed load of `icu_sim::waveform::WaveformMonitor` (per bed three ECG leads at 500 Hz, the
//! pleth and the arterial pressure at 125 Hz, one PCD-01 message per channel group every
//! 800 ms, a few samples dropped), decoded by the gateway's own PCD-01 waveform decoder and
//! stored by `StoreDb::commit_batch` as the gateway stores it (one batch per 800 ms tick).
//!
//!     cargo bench -p icu-store --bench waveform_store
//!     cargo bench -p icu-store --bench waveform_store -- --beds 30 --seconds 60
//!
//! Per packing (`icu_store::db::WaveformPacking`) and load (ECG messages alone, pleth and ABP
//! messages alone, all), it prints the bytes of database pages in use per sample present
//! (after the write-ahead log was checkpointed, less the empty store's pages), the ratio
//! against 16-bit raw samples (2 bytes), the rows' payload bytes per sample (what SQLite's
//! pages add is the difference), and the writer's time per sample. The curves are
//! deterministic (fixed seed), so the sizes are the same on every machine.
//!
//! With `ICU_BENCH_ECG_NPY` set to the file `scripts/fetch-ecg` prints (a public recording
//! shipped in a package: MIT-BIH Arrhythmia Database record 208, lead MLII, 5 min at 360 Hz,
//! 11-bit, from scipy 1.10.1's `misc/ecg.dat`), it also stores that recording as one monitor's
//! ECG lead II in 0.8 s segments (288 samples, one message each) and prints the same columns:
//!
//!     ICU_BENCH_ECG_NPY=$(scripts/fetch-ecg) cargo bench -p icu-store --bench waveform_store

use std::time::{Duration, Instant};

use icu_drivers::hl7::{decode_pcd01_waveforms, WaveformConfig};
use icu_drivers::terminology::Terminology;
use icu_protos::v1::WaveformSegment;
use icu_sim::physiology::Vitals;
use icu_sim::waveform::{GapPlan, WaveformMonitor};
use icu_store::db::{digest, WaveformPacking};
use icu_store::waveform_codec::{Compressor, DeltaOrder, WaveformCodec};
use icu_store::{ObservationBatch, StoreDb, WriteRequest};

/// `--name value` from the command line (cargo bench passes `--bench` too: ignored).
fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == format!("--{name}"))
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Which channel group's messages a run stores.
#[derive(Clone, Copy)]
enum Load {
    Ecg,
    PlethAbp,
    All,
}

/// `seconds` of every bed's waveform messages, decoded: per 800 ms tick, one write request per
/// message of the load. Returns the ticks and the samples present.
fn messages(beds: usize, seconds: u64, load: Load) -> (Vec<Vec<WriteRequest>>, u64) {
    let start = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a valid time");
    let terminology = Terminology::builtin();
    let config = WaveformConfig::default();
    let mut monitors: Vec<WaveformMonitor> = icu_sim::beds(beds)
        .into_iter()
        .map(|bed| {
            let mut m = WaveformMonitor::new(bed, 19, start);
            // A lead off for a moment now and then: 3 positions of every 997.
            m.gaps = GapPlan {
                every: 997,
                length: 3,
            };
            m
        })
        .collect();
    let ticks = seconds * 1000 / 800;
    let mut out = Vec::new();
    let mut samples = 0u64;
    for tick in 0..ticks {
        let mut batch = Vec::new();
        for (b, monitor) in monitors.iter_mut().enumerate() {
            let vitals = Vitals {
                heart_rate: 60.0 + b as f64 + (tick % 50) as f64 / 10.0,
                spo2: 97.0,
                resp_rate: 16.0,
                temp_c: 37.0,
                nibp_sys: 120.0,
                nibp_dia: 80.0,
            };
            let device = monitor.bed.device_id.clone();
            let bed = monitor.bed.bed_id.clone();
            for (g, (text, _)) in monitor.next_messages(&vitals).into_iter().enumerate() {
                let wanted = match load {
                    Load::Ecg => g == 0,
                    Load::PlethAbp => g == 1,
                    Load::All => true,
                };
                if !wanted {
                    continue;
                }
                let received = 1_790_000_000_000_000 + tick as i64 * 800_000;
                let decoded =
                    decode_pcd01_waveforms(text.as_bytes(), received, &terminology, &config)
                        .expect("the simulator's messages decode");
                let segments: Vec<WaveformSegment> = decoded
                    .segments
                    .into_iter()
                    .map(|s| WaveformSegment {
                        device_id: device.clone(),
                        bed: bed.clone(),
                        clock_synced: true,
                        patient_id: format!("MRN{b:05}"),
                        ..s
                    })
                    .collect();
                samples += segments.iter().map(|s| s.samples.len() as u64).sum::<u64>();
                batch.push(WriteRequest::Observations(ObservationBatch {
                    device_id: device.clone(),
                    bed: bed.clone(),
                    dedup: Some((
                        decoded.message.header.control_id.clone(),
                        digest(text.as_bytes()),
                    )),
                    observations: Vec::new().into(),
                    order: Default::default(),
                    traceparent: None,
                    waveforms: segments.into(),
                }));
            }
        }
        out.push(batch);
    }
    (out, samples)
}

/// The samples of a NumPy `.npy` file of little-endian uint16 (`<u2`, one dimension).
fn read_npy_u16(path: &str) -> Vec<u16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(bytes.starts_with(b"\x93NUMPY"), "{path}: not a .npy file");
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]);
    assert!(
        header.contains("'<u2'"),
        "{path}: not uint16 little-endian: {header}"
    );
    bytes[10 + header_len..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// A recorded ECG (360 Hz) as one monitor's lead II, one 288-sample segment per message.
fn recorded_ecg(samples: &[u16]) -> (Vec<Vec<WriteRequest>>, u64) {
    const PER: usize = 288;
    let ticks = samples
        .chunks(PER)
        .enumerate()
        .map(|(i, chunk)| {
            let t = 1_790_000_000_000_000 + i as i64 * 800_000;
            let segment = WaveformSegment {
                device_id: "mon-01".into(),
                bed: "bed-01".into(),
                mdc_code: 131_330,
                mdc_refid: "MDC_ECG_ELEC_POTL_II".into(),
                unit_ucum: "mV".into(),
                sample_rate_hz: 360.0,
                sample_period_us: 1e6 / 360.0,
                scale: 0.005,
                offset: -5.12,
                range_low: Some(0.0),
                range_high: Some(2047.0),
                first_sample_time_us: Some(t),
                receive_time_us: t + 800_000,
                clock_synced: true,
                sample_count: chunk.len() as u32,
                samples: chunk.iter().map(|&v| i32::from(v)).collect(),
                patient_id: "MRN00001".into(),
                source_message_id: format!("ECG-{i}"),
                ..Default::default()
            };
            vec![WriteRequest::Observations(ObservationBatch {
                device_id: "mon-01".into(),
                bed: "bed-01".into(),
                dedup: Some((format!("ECG-{i}"), i as i64)),
                observations: Vec::new().into(),
                order: Default::default(),
                traceparent: None,
                waveforms: vec![segment].into(),
            })]
        })
        .collect();
    (ticks, samples.len() as u64)
}

/// Each segment as a message of its own (one row per segment): what storing segments one row
/// each would give.
fn one_per_segment(ticks: &[Vec<WriteRequest>]) -> Vec<Vec<WriteRequest>> {
    ticks
        .iter()
        .map(|batch| {
            batch
                .iter()
                .flat_map(|req| {
                    let WriteRequest::Observations(b) = req else {
                        return Vec::new();
                    };
                    b.waveforms
                        .iter()
                        .enumerate()
                        .map(|(i, w)| {
                            let control = format!("{}-{i}", b.dedup.as_ref().expect("dedup").0);
                            WriteRequest::Observations(ObservationBatch {
                                dedup: Some((control.clone(), digest(control.as_bytes()))),
                                waveforms: vec![w.clone()].into(),
                                ..b.clone()
                            })
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Stores `ticks` into a new file; returns (bytes of pages in use added, bytes of the rows'
/// payloads, writer time).
fn store(ticks: &[Vec<WriteRequest>], packing: WaveformPacking) -> (u64, u64, Duration) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("waveforms.db");
    let mut db = StoreDb::open(&path, "gw", false, 1 << 40).expect("open the store");
    db.set_waveform_packing(packing);
    let data = |db: &StoreDb| db.used_bytes().expect("measure") - db.policy().wal_allowance_bytes();
    let empty = data(&db);
    let mut spent = Duration::ZERO;
    for batch in ticks {
        let t = Instant::now();
        for r in db.commit_batch(batch) {
            r.expect("stored");
        }
        spent += t.elapsed();
    }
    let payload: i64 = rusqlite::Connection::open(&path)
        .and_then(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM records",
                [],
                |r| r.get(0),
            )
        })
        .expect("read the rows");
    (data(&db) - empty, payload as u64, spent)
}

/// One line of the table.
fn row(load: &str, label: &str, samples: u64, bytes: u64, payload: u64, spent: Duration) {
    let per = bytes as f64 / samples as f64;
    println!(
        "{:<12} {:<38} {:>10} {:>9.3} {:>8.2}:1 {:>9.3} {:>11.1}",
        load,
        label,
        samples,
        per,
        2.0 / per,
        payload as f64 / samples as f64,
        spent.as_nanos() as f64 / samples as f64
    );
}

fn main() {
    let beds = arg("beds", 30) as usize;
    let seconds = arg("seconds", 60);
    let codec = |order, compressor| WaveformPacking::Codec(WaveformCodec { order, compressor });
    let variants = [
        (
            "delta1|2+varint, row zstd (chosen)",
            WaveformPacking::Auto,
            false,
        ),
        (
            "delta1+varint, row zstd",
            codec(DeltaOrder::First, Compressor::None),
            false,
        ),
        (
            "delta2+varint, row zstd",
            codec(DeltaOrder::Second, Compressor::None),
            false,
        ),
        (
            "delta2+varint+zstd1, row zstd",
            codec(DeltaOrder::Second, Compressor::Zstd { level: 1 }),
            false,
        ),
        (
            "delta2+varint+zstd1, row per segment",
            codec(DeltaOrder::Second, Compressor::Zstd { level: 1 }),
            true,
        ),
        (
            "delta1+varint+zstd1, row per segment",
            codec(DeltaOrder::First, Compressor::Zstd { level: 1 }),
            true,
        ),
        (
            "unpacked sint32, row zstd",
            WaveformPacking::Unpacked,
            false,
        ),
    ];
    println!(
        "waveform store: {beds} beds, {seconds} s (3 ECG leads at 500 Hz, pleth and ABP at 125 Hz per bed), real writer into a SQLite file"
    );
    println!(
        "{:<12} {:<38} {:>10} {:>9} {:>9} {:>9} {:>11}",
        "load", "packing", "samples", "B/sample", "vs 16bit", "row B/s", "writer ns/s"
    );
    if let Ok(path) = std::env::var("ICU_BENCH_ECG_NPY") {
        let (ticks, samples) = recorded_ecg(&read_npy_u16(&path));
        for (label, packing, _) in variants.iter().filter(|v| !v.2) {
            let (bytes, payload, spent) = store(&ticks, *packing);
            row("MIT-BIH 208", label, samples, bytes, payload, spent);
        }
    }
    for (name, load) in [
        ("ECG", Load::Ecg),
        ("pleth+ABP", Load::PlethAbp),
        ("all", Load::All),
    ] {
        let (ticks, samples) = messages(beds, seconds, load);
        let split = one_per_segment(&ticks);
        for (label, packing, per_segment) in variants {
            let (bytes, payload, spent) = store(if per_segment { &split } else { &ticks }, packing);
            row(name, label, samples, bytes, payload, spent);
        }
    }
}
