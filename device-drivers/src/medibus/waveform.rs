//! Realtime frames to curves: per stream, runs of integer samples with the stream's code,
//! sample interval and scale, and gaps where a frame was bad.
//!
//! Guarantees:
//! - A sample is the device's 12-bit bin, never rescaled or rounded: the value is
//!   [`RealtimeScale::value`] of it, so a consumer can reproduce it exactly.
//! - A bad frame (device-marked corrupt, wrong sample count, stray byte) is a `None` in every
//!   stream its sync byte and commands announce: a gap, never a zero or a repeated sample.
//! - Samples of a stream the host did not configure are counted, never attached to another
//!   stream.
//! - Memory is bounded: a run is handed over at `run_len` samples; ready runs are bounded by
//!   [`MAX_READY_RUNS`] (older ones dropped and counted) until taken.

use super::realtime::{stream_numbers, BreathPhase, RealtimeFrame, MAX_STREAMS};
use super::realtime_config::RealtimeScale;

/// Ready runs kept until taken.
pub const MAX_READY_RUNS: usize = 1024;

/// What the host configured for one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamSpec {
    /// 1-based position in the `T` command.
    pub stream: u8,
    pub code: u8,
    pub interval_us: u32,
    pub scale: RealtimeScale,
}

/// Consecutive samples of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveformRun {
    pub stream: u8,
    pub code: u8,
    pub interval_us: u32,
    pub scale: RealtimeScale,
    /// Stream byte offset of the sync byte of the first sample's frame.
    pub first_offset: u64,
    /// Bins; `None` is a gap (a bad frame), one per missed sample.
    pub samples: Vec<Option<u16>>,
    /// Breath phase changes (`C6`), at the index of the sample of their frame.
    pub breaths: Vec<(u32, BreathPhase)>,
}

impl WaveformRun {
    /// Samples that are gaps.
    pub fn gaps(&self) -> usize {
        self.samples.iter().filter(|s| s.is_none()).count()
    }
}

/// Counters of the assembler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveformStats {
    pub samples: u64,
    pub gaps: u64,
    /// Samples of streams the host did not configure.
    pub unmapped_samples: u64,
    /// Bad frames that name no stream: nothing to mark.
    pub unattributed_bad_frames: u64,
    pub dropped_runs: u64,
}

/// Turns frames into runs per stream (see module docs).
#[derive(Debug)]
pub struct WaveformAssembler {
    specs: [Option<StreamSpec>; MAX_STREAMS],
    runs: [Option<WaveformRun>; MAX_STREAMS],
    run_len: usize,
    ready: Vec<WaveformRun>,
    stats: WaveformStats,
}

impl WaveformAssembler {
    /// Runs are handed over at `run_len` samples (at least 1).
    pub fn new(specs: &[StreamSpec], run_len: usize) -> Self {
        let mut table = [None; MAX_STREAMS];
        for s in specs {
            if (1..=MAX_STREAMS as u8).contains(&s.stream) {
                table[usize::from(s.stream - 1)] = Some(*s);
            }
        }
        Self {
            specs: table,
            runs: Default::default(),
            run_len: run_len.max(1),
            ready: Vec::new(),
            stats: WaveformStats::default(),
        }
    }

    pub fn stats(&self) -> WaveformStats {
        self.stats
    }

    /// Adds one frame's samples (or gaps) to the runs of its streams.
    pub fn push(&mut self, frame: &RealtimeFrame) {
        if frame.fault.is_some() && frame.streams == 0 {
            self.stats.unattributed_bad_frames += 1;
        }
        let mut bins = frame.bins.iter().copied();
        for stream in stream_numbers(frame.streams) {
            let i = usize::from(stream - 1);
            let sample = if frame.fault.is_none() {
                bins.next()
            } else {
                None
            };
            let Some(spec) = self.specs[i] else {
                self.stats.unmapped_samples += 1;
                continue;
            };
            let run = self.runs[i].get_or_insert_with(|| WaveformRun {
                stream,
                code: spec.code,
                interval_us: spec.interval_us,
                scale: spec.scale,
                first_offset: frame.offset,
                samples: Vec::new(),
                breaths: Vec::new(),
            });
            if let Some(phase) = frame.breath {
                run.breaths.push((run.samples.len() as u32, phase));
            }
            match sample {
                Some(_) => self.stats.samples += 1,
                None => self.stats.gaps += 1,
            }
            run.samples.push(sample);
            if run.samples.len() >= self.run_len {
                if let Some(done) = self.runs[i].take() {
                    self.ready(done);
                }
            }
        }
    }

    fn ready(&mut self, run: WaveformRun) {
        if self.ready.len() >= MAX_READY_RUNS {
            self.ready.remove(0);
            self.stats.dropped_runs += 1;
        }
        self.ready.push(run);
    }

    /// Hands over every unfinished run too (at a reconfiguration, a re-initialisation or the
    /// end of the stream).
    pub fn flush(&mut self) {
        let unfinished: Vec<WaveformRun> = self.runs.iter_mut().filter_map(Option::take).collect();
        for run in unfinished {
            self.ready(run);
        }
    }

    /// The runs handed over so far, in the order they completed.
    pub fn take_runs(&mut self) -> Vec<WaveformRun> {
        std::mem::take(&mut self.ready)
    }
}
