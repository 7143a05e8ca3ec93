//! The `SampledData.data` text of a waveform segment, both ways: pure, no FHIR types.
//!
//! Owns: [`encode`] (a segment's timeline → the space-separated tokens and the values kept
//! for its `L`/`U` positions) and [`decode`] (back).
//!
//! Guarantees (a property test holds them over generated segments with gaps and out-of-range
//! runs):
//! - one token per timeline position (`sample_count` of them), separated by one space;
//! - a gap position is `E`, never a zero or a repeat of its neighbour;
//! - a present sample is the integer the device wrote (`-125`), unless it lies outside the
//!   device's data range and that limit is known: then it is `L` (below) or `U` (above), as FHIR
//!   says ("below/above the detection limit"), and its integer is kept, in position order, in
//!   the extension `sampled-data-limit-values` of the `valueSampledData`. Nothing is lost:
//!   [`decode`] gives back every sample, bit-exact, and which positions were out of range;
//! - an inconsistent segment (runs beyond the timeline, fewer or more samples than the
//!   positions that are not gaps) is refused with the reason, never guessed at.

use icu_protos::v1::{SampleRun, WaveformSegment};

/// What to write for the positions outside the device's data range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Markers {
    /// Write `L` for `below_range` positions (the lower limit is known).
    pub lower: bool,
    /// Write `U` for `above_range` positions (the upper limit is known).
    pub upper: bool,
}

/// One segment's data text and the integers behind its `L`/`U` tokens (in position order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub data: String,
    pub limit_values: Vec<i32>,
    /// Positions that are `E`.
    pub gaps: u64,
}

const SAMPLE: u8 = 0;
const GAP: u8 = 1;
const BELOW: u8 = 2;
const ABOVE: u8 = 3;

/// Marks `runs` as `kind` in `marks` (a gap stays a gap); fails on a run beyond the timeline.
fn mark(marks: &mut [u8], runs: &[SampleRun], kind: u8, what: &str) -> Result<(), String> {
    for run in runs {
        let end = u64::from(run.start) + u64::from(run.count);
        if end > marks.len() as u64 {
            return Err(format!(
                "{what} run {}+{} lies beyond the segment's {} positions",
                run.start,
                run.count,
                marks.len()
            ));
        }
        for m in &mut marks[run.start as usize..end as usize] {
            if *m == SAMPLE {
                *m = kind;
            }
        }
    }
    Ok(())
}

/// The data text of `seg` (see the module docs).
pub fn encode(seg: &WaveformSegment, markers: Markers) -> Result<Encoded, String> {
    let n = seg.sample_count as usize;
    let mut marks = vec![SAMPLE; n];
    mark(&mut marks, &seg.gaps, GAP, "gap")?;
    if markers.lower {
        mark(&mut marks, &seg.below_range, BELOW, "below-range")?;
    }
    if markers.upper {
        mark(&mut marks, &seg.above_range, ABOVE, "above-range")?;
    }
    let gaps = marks.iter().filter(|m| **m == GAP).count();
    if n - gaps != seg.samples.len() {
        return Err(format!(
            "{} samples for {} positions of which {gaps} are gaps",
            seg.samples.len(),
            n
        ));
    }
    // Up to 6 characters per sample in practice (`-1234 `).
    let mut data = String::with_capacity(n * 6);
    let mut limit_values = Vec::new();
    let mut samples = seg.samples.iter();
    for (i, m) in marks.iter().enumerate() {
        if i > 0 {
            data.push(' ');
        }
        if *m == GAP {
            data.push('E');
            continue;
        }
        // The count was checked above.
        let Some(&v) = samples.next() else { break };
        match *m {
            BELOW => {
                data.push('L');
                limit_values.push(v);
            }
            ABOVE => {
                data.push('U');
                limit_values.push(v);
            }
            _ => {
                use std::fmt::Write as _;
                let _ = write!(data, "{v}");
            }
        }
    }
    Ok(Encoded {
        data,
        limit_values,
        gaps: gaps as u64,
    })
}

/// A decoded data text: one entry per position (`None` at `E`), and the out-of-range runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    pub samples: Vec<Option<i32>>,
    pub below_range: Vec<SampleRun>,
    pub above_range: Vec<SampleRun>,
}

fn push_run(runs: &mut Vec<SampleRun>, at: u32) {
    match runs.last_mut() {
        Some(r) if r.start + r.count == at => r.count += 1,
        _ => runs.push(SampleRun {
            start: at,
            count: 1,
        }),
    }
}

/// Reads a data text written by [`encode`]; `limit_values` are the integers of its `L`/`U`
/// tokens in order (the `sampled-data-limit-values` extension). An `L`/`U` without a value
/// left, a value left over, or a token that is not an integer, `E`, `L` or `U` is refused.
pub fn decode(data: &str, limit_values: &[i32]) -> Result<Decoded, String> {
    let mut out = Decoded::default();
    let mut values = limit_values.iter();
    let tokens = data.split(' ').filter(|_| !data.is_empty());
    for (i, token) in tokens.enumerate() {
        let at = u32::try_from(i).map_err(|_| "more than 2^32 positions".to_owned())?;
        let mut limit = |runs: &mut Vec<SampleRun>| -> Result<Option<i32>, String> {
            let v = values.next().ok_or_else(|| {
                format!("{token} at position {i} has no value in sampled-data-limit-values")
            })?;
            push_run(runs, at);
            Ok(Some(*v))
        };
        let sample = match token {
            "E" => None,
            "L" => limit(&mut out.below_range)?,
            "U" => limit(&mut out.above_range)?,
            _ => Some(
                token
                    .parse::<i32>()
                    .map_err(|_| format!("token {token:?} at position {i} is no sample"))?,
            ),
        };
        out.samples.push(sample);
    }
    if values.next().is_some() {
        return Err(format!(
            "{} values in sampled-data-limit-values for fewer L/U positions",
            limit_values.len()
        ));
    }
    Ok(out)
}

/// `v1 v2 ...` of the limit values, and back.
pub fn limit_values_text(values: &[i32]) -> String {
    let parts: Vec<String> = values.iter().map(i32::to_string).collect();
    parts.join(" ")
}

pub fn parse_limit_values(text: &str) -> Result<Vec<i32>, String> {
    text.split_ascii_whitespace()
        .map(|t| {
            t.parse::<i32>()
                .map_err(|_| format!("{t:?} in sampled-data-limit-values is no integer"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(positions: &[Option<i32>], below: &[u32], above: &[u32]) -> WaveformSegment {
        let runs = |ps: &mut dyn Iterator<Item = u32>| {
            let mut runs = Vec::new();
            for p in ps {
                push_run(&mut runs, p);
            }
            runs
        };
        WaveformSegment {
            sample_count: positions.len() as u32,
            samples: positions.iter().flatten().copied().collect(),
            gaps: runs(
                &mut (0..positions.len() as u32).filter(|i| positions[*i as usize].is_none()),
            ),
            below_range: runs(&mut below.iter().copied()),
            above_range: runs(&mut above.iter().copied()),
            ..Default::default()
        }
    }

    #[test]
    fn gaps_are_e_and_out_of_range_samples_are_l_or_u_with_their_values_kept() {
        let s = seg(
            &[Some(5), None, None, Some(-900), Some(7), Some(901), Some(0)],
            &[3],
            &[5],
        );
        let both = Markers {
            lower: true,
            upper: true,
        };
        let e = encode(&s, both).unwrap();
        assert_eq!(e.data, "5 E E L 7 U 0");
        assert_eq!(e.limit_values, [-900, 901]);
        assert_eq!(e.gaps, 2);
        let d = decode(&e.data, &e.limit_values).unwrap();
        assert_eq!(
            d.samples,
            [Some(5), None, None, Some(-900), Some(7), Some(901), Some(0)]
        );
        assert_eq!(d.below_range, s.below_range);
        assert_eq!(d.above_range, s.above_range);
        // Without a known limit the value is written as it is.
        let plain = encode(&s, Markers::default()).unwrap();
        assert_eq!(plain.data, "5 E E -900 7 901 0");
        assert!(plain.limit_values.is_empty());
    }

    #[test]
    fn inconsistent_segments_and_texts_are_refused() {
        let mut s = seg(&[Some(1), None, Some(2)], &[], &[]);
        s.samples.push(3);
        assert!(encode(&s, Markers::default())
            .unwrap_err()
            .contains("3 samples for 3 positions of which 1 are gaps"));
        let mut s = seg(&[Some(1)], &[], &[]);
        s.gaps.push(SampleRun { start: 1, count: 1 });
        assert!(encode(&s, Markers::default())
            .unwrap_err()
            .contains("beyond"));
        assert!(decode("1 L", &[]).is_err());
        assert!(decode("1 2", &[4]).is_err());
        assert!(decode("1 x", &[]).is_err());
        assert!(decode("1  2", &[]).is_err(), "one space between tokens");
        assert_eq!(decode("", &[]).unwrap().samples, Vec::<Option<i32>>::new());
        assert_eq!(parse_limit_values(" -3 4 ").unwrap(), [-3, 4]);
        assert_eq!(limit_values_text(&[-3, 4]), "-3 4");
    }

    proptest! {
        /// Every sample comes back bit-exact, E exactly at the gaps, L/U exactly at the
        /// out-of-range positions that are not gaps.
        #[test]
        fn data_text_round_trips(
            positions in prop::collection::vec(
                prop_oneof![3 => any::<i32>().prop_map(Some), 1 => Just(None)], 0..300),
            below_mask in prop::collection::vec(any::<bool>(), 300),
            above_mask in prop::collection::vec(any::<bool>(), 300),
            lower in any::<bool>(),
            upper in any::<bool>(),
        ) {
            let n = positions.len();
            let below: Vec<u32> = (0..n as u32)
                .filter(|i| below_mask[*i as usize] && positions[*i as usize].is_some())
                .collect();
            let above: Vec<u32> = (0..n as u32)
                .filter(|i| above_mask[*i as usize] && !below_mask[*i as usize]
                    && positions[*i as usize].is_some())
                .collect();
            let s = seg(&positions, &below, &above);
            let e = encode(&s, Markers { lower, upper }).unwrap();
            prop_assert_eq!(e.data.split(' ').filter(|t| !t.is_empty()).count(), n);
            let text = limit_values_text(&e.limit_values);
            let d = decode(&e.data, &parse_limit_values(&text).unwrap()).unwrap();
            prop_assert_eq!(&d.samples, &positions);
            prop_assert_eq!(e.gaps as usize, positions.iter().filter(|p| p.is_none()).count());
            let expect_below = if lower { s.below_range.clone() } else { Vec::new() };
            let expect_above = if upper { s.above_range.clone() } else { Vec::new() };
            prop_assert_eq!(d.below_range, expect_below);
            prop_assert_eq!(d.above_range, expect_above);
        }
    }
}
