//! Decode cost of a realistic ~2 KB IHE PCD-01 message: (a) hl7-parser's `Message::parse`
//! alone, (c) the zero-copy splitter that replaced it on the decode path (`hl7/message.rs`),
//! made to visit every field, repetition, component and subcomponent as hl7-parser builds
//! them, and (b) the full `decode_pcd01` (header, splitting, row rules, terminology).
//!
//! Run with `cargo bench -p icu-drivers --bench pcd01`. A plain `main` timed with `Instant`, so
//! it needs no bench framework; numbers are indicative, not statistically rigorous.

use std::hint::black_box;
use std::time::Instant;

use icu_drivers::hl7::{decode_pcd01, split_for_bench};
use icu_drivers::terminology::Terminology;

#[path = "support/pcd01_message.rs"]
mod pcd01_message;
use pcd01_message::message;

const N: u32 = 20_000;

fn time(label: &str, mut f: impl FnMut()) {
    for _ in 0..N / 10 {
        f(); // warm-up
    }
    let start = Instant::now();
    for _ in 0..N {
        f();
    }
    let per_message = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    println!("{label:<38} {per_message:>8.2} µs/message");
}

fn main() {
    let text = message();
    let terminology = Terminology::builtin();
    let decoded = decode_pcd01(text.as_bytes(), 0, &terminology).expect("bench message decodes");
    println!(
        "message: {} bytes, {} segments, {} observations; N = {N}",
        text.len(),
        text.split('\r').count(),
        decoded.observations.len()
    );
    time("(a) hl7_parser::Message::parse", || {
        let parsed = hl7_parser::Message::parse(black_box(&text)).expect("parses");
        black_box(parsed);
    });
    time("(c) zero-copy splitter, all values", || {
        let parsed = split_for_bench(black_box(text.as_bytes())).expect("splits");
        black_box(parsed);
    });
    time("(b) decode_pcd01", || {
        let decoded = decode_pcd01(black_box(text.as_bytes()), 0, &terminology);
        let _ = black_box(decoded);
    });
}
