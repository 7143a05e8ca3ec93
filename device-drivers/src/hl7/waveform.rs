//! IHE PCD-01 waveform observations (the IHE PCD Waveform Content Module, WCM) to canonical
//! [`WaveformSegment`]s, next to the numerics of the same message.
//!
//! Owns: finding the waveform rows of an `ORU^R01` and their attribute rows, turning each into
//! one segment of integer samples with its rate, scale, range, time and gaps, and refusing what
//! cannot be read exactly.
//!
//! Guarantees:
//! - The numerics of a message decode exactly as [`super::decode_pcd01`] decodes them; only the
//!   waveform rows and their attribute rows are taken out of them (they gave text observations
//!   before). A message without waveform rows gives the same [`Pcd01Message`].
//! - All or nothing, like `decode_pcd01`: one bad waveform refuses the whole message with one
//!   [`Hl7Error`] (AE with an ERR-2 location down to the sample: `OBX^5^5^17`).
//! - Lossless: every sample is kept as the integer the device wrote (`"-0.125"` is `-125` with
//!   `decimal_exponent = -3`); gaps stay gaps (an empty value is a gap, never a zero).
//! - Bounded and panic-free on any input (fuzzed: `device-drivers/fuzz/fuzz_targets/pcd01_waveform.rs`):
//!   the number of samples is checked against [`WaveformConfig::max_samples`] before any is
//!   parsed.
//!
//! # Row layout (WCM as senders use it)
//!
//! ```text
//! OBR|2||...|69121^MDC_OBS_WAVE_CTS^MDC|||<OBR-7 start>|<OBR-8 end>
//! OBX|3|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.1.1.1002|12^15^^17^...|266418^MDC_DIM_MILLI_VOLT^MDC|||||R|||<OBX-14 first sample>
//! OBX|4|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1002.1|500|264608^MDC_DIM_PER_SEC^MDC
//! OBX|5|NR|0^MDC_ATTR_DATA_RANGE^MDC|1.1.1.1002.2|-500^500|266418^MDC_DIM_MILLI_VOLT^MDC
//! OBX|6|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|1.1.1.1002.3|0.005|266418^MDC_DIM_MILLI_VOLT^MDC
//! ```
//!
//! - A waveform row is an OBX whose OBX-2 is `NA` (numeric array: the samples of one channel
//!   separated by the component separator `^`) or `MA` (multiplexed array: time points separated
//!   by the repetition separator `~`; only one channel per row is taken, see below).
//! - Its attribute rows are the OBX rows of the same OBR group whose OBX-4 extends the waveform
//!   row's OBX-4 by one more level (`1.1.1.1002` → `1.1.1.1002.1`). They are recognised by their
//!   OBX-3 reference id (OBX-3.2), because senders disagree on the numeric code (0, 2327, 67917
//!   and 68320 are all seen): sample rate ([`WaveformConfig::sample_rate_ids`]), data range
//!   ([`WaveformConfig::data_range_ids`], `NR`: `low^high`), resolution
//!   ([`WaveformConfig::resolution_ids`]: physical units per written unit). Other attribute rows
//!   (e.g. MDC_EVT_INOP) are taken out of the numerics and otherwise ignored.
//! - The first sample's time is OBX-14 of the waveform row, else OBR-7 of its OBR.
//! - The unit is OBX-6 of the waveform row, read as for numerics.
//!
//! # Refused (AE)
//!
//! - no sample-rate row (101), a sample rate that is not a number, zero, negative, above
//!   [`WaveformConfig::max_sample_rate_hz`] or in a unit that is not per second (102), two
//!   sample-rate rows that disagree (102), and (when [`WaveformConfig::interval_tolerance`] is
//!   set) a sample count that does not fit the sample rate and the OBR-7..OBR-8 interval (102):
//!   all "a missing or inconsistent sample rate";
//! - a sample that is not an HL7 number, or that cannot be kept exactly as a 32-bit integer at
//!   the segment's precision (102, located at its component);
//! - more samples than [`WaveformConfig::max_samples`] (102);
//! - an `NA` value with repetitions, an `MA` time point with more than one channel, a data range
//!   or resolution that is not a number or is inverted (102).
//!
//! # Sources
//!
//! - IHE PCD Technical Framework Supplement "Waveform Content Module (WCM)", trial implementation
//!   2012 and Rev. 1.3 (2018-01-08), as transcribed on public document sites (the body is not
//!   retrievable here beyond excerpts): one NA OBX per channel with attribute rows for
//!   MDC_ATTR_SAMP_RATE and MDC_ATTR_DATA_RANGE.
//! - HL7 v2.3 chapter 7.14-7.20 (waveform data: NA and MA value types, MA multiplexing with
//!   time points as repetitions).
//! - WCM test messages in public code: the NIST/"sllmdilab t5" waveform processor tests
//!   (`0^MDC_ATTR_SAMP_RATE^MDC` at `<sub-id>.1` in 264608 MDC_DIM_PER_SEC, `NR`
//!   `0^MDC_ATTR_DATA_RANGE^MDC` at `<sub-id>.2`, OBX-14 the first-sample time, OBR-7/OBR-8 the
//!   interval); Mindray eGateway-style captures in several repositories (`1.7.6.131330.1`
//!   sample rate in 264640 MDC_DIM_HZ, `2327^MDC_ATTR_NU_MSMT_RES^MDC` or
//!   `67917^MDC_ATTR_NU_MSMT_RES^MDC` at `.2` as the resolution of integer samples,
//!   MDC_EVT_INOP at `.3`).
//! - MDC codes: ../shared/reference/protocols.md §5 (code arithmetic: partition × 65536 + term);
//!   IEEE 11073 nomenclature tables in public code (MDC_ECG_ELEC_POTL_I/II/III = 257/258/317 in
//!   partition 2 → 131329/131330/131389; MDC_PULS_OXIM_PLETH = 19380 → 150452, also seen in a
//!   FHIR SampledData example; MDC_DIM_MILLI_VOLT = 4274 → 266418; MDC_DIM_PER_SEC = 2464 →
//!   264608; MDC_DIM_HZ = 2496 → 264640). MDC_PRESS_BLD_ART_ABP = 150036 is derived (the base of
//!   _SYS/_DIA/_MEAN 150037-150039), not seen in a message: UNCONFIRMED.
//!
//! UNCONFIRMED (each is configurable in [`WaveformConfig`] or stated here so it can be changed):
//! the reference ids that name the attribute rows; that MDC_ATTR_DATA_RANGE is in written
//! values (both sources' ranges are in the units the samples are written in); that OBR-8 is the
//! end of the samples' interval (the check has a tolerance and can be turned off); that a
//! device marks a missing sample with an empty value (no source shows one; sentinel values
//! such as MDC_EVT_DATA_MISSING rows are not read); MA with several channels in one row (refused).

use std::collections::HashMap;

use icu_protos::v1::{ObservationStatus, SampleRun, WaveformSegment};

use super::error::{AckCode, ErrorCode, ErrorLocation, Hl7Error};
use super::message::{component, quote, repetitions, unescape, Delimiters, Segment};
use super::pcd01::{
    decode_pcd01_with, numeric_mdc_code, parse_hl7_numeric, row_status, time_field, units,
    Pcd01Message,
};
use crate::terminology::Terminology;

/// MDC_DIM_PER_SEC and MDC_DIM_HZ: the units a sample rate may be given in (or none).
const RATE_UNITS: [u32; 2] = [264_608, 264_640];
const RATE_UNIT_NAMES: [&str; 6] = ["MDC_DIM_PER_SEC", "MDC_DIM_HZ", "/s", "Hz", "1/s", "s-1"];
/// At most this many decimal places are kept (10^-9 of the unit).
const MAX_DECIMALS: u32 = 9;

/// What the waveform decoder accepts. The identifiers match OBX-3.2 (reference id) or a
/// non-zero OBX-3.1 (code), case-insensitively.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveformConfig {
    /// Most samples (present or missing) one waveform row may carry; more is refused. 15,000
    /// is 30 s at 500 Hz.
    pub max_samples: u32,
    /// Highest sample rate accepted, per second.
    pub max_sample_rate_hz: f64,
    /// Attribute rows that give the sample rate. UNCONFIRMED: `MDC_ATTR_SAMPLE_RATE` is seen in
    /// one vendor-style message only.
    pub sample_rate_ids: Vec<String>,
    /// Attribute rows that give the data range (`NR`, `low^high`, in written values).
    pub data_range_ids: Vec<String>,
    /// Attribute rows that give the resolution (physical units per written unit).
    pub resolution_ids: Vec<String>,
    /// When set, a segment's duration (samples / rate) must match OBR-8 minus its first
    /// sample's time within this fraction (and at least two sample periods). UNCONFIRMED that
    /// every sender sets OBR-8 this way; `None` turns the check off.
    pub interval_tolerance: Option<f64>,
}

impl Default for WaveformConfig {
    fn default() -> Self {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            max_samples: 15_000,
            max_sample_rate_hz: 10_000.0,
            sample_rate_ids: ids(&["MDC_ATTR_SAMP_RATE", "MDC_ATTR_SAMPLE_RATE"]),
            data_range_ids: ids(&["MDC_ATTR_DATA_RANGE"]),
            resolution_ids: ids(&["MDC_ATTR_NU_MSMT_RES", "MDC_ATTR_SA_MSMT_RES"]),
            interval_tolerance: Some(0.05),
        }
    }
}

/// A decoded PCD-01 message with its waveforms.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcd01Waveforms {
    /// The message and its numerics, waveform rows and their attribute rows left out.
    pub message: Pcd01Message,
    /// One segment per waveform row, in message order. `device_id`, `bed`, `seq`,
    /// `clock_synced` and `patient_id` are left for the gateway to set.
    pub segments: Vec<WaveformSegment>,
}

/// Decodes a PCD-01 payload (one MLLP frame, markers excluded) into its numerics and its
/// waveform segments. See the module docs for the rules.
pub fn decode_pcd01_waveforms(
    payload: &[u8],
    receive_time_us: i64,
    terminology: &Terminology,
    config: &WaveformConfig,
) -> Result<Pcd01Waveforms, Hl7Error> {
    let mut segments = Vec::new();
    let mut take = |segs: &[Segment<'_>], d: &Delimiters| -> Result<Vec<u32>, Hl7Error> {
        let (found, rows) = find_waveforms(segs, d, receive_time_us, terminology, config)?;
        segments = found;
        Ok(rows)
    };
    let message = decode_pcd01_with(payload, receive_time_us, terminology, &mut take)?;
    let test_mode = matches!(message.header.processing_id.as_str(), "D" | "T");
    for s in &mut segments {
        if let (true, Some(id)) = (s.equipment_id.is_empty(), &message.equipment_id) {
            s.equipment_id.clone_from(id);
        }
        s.source_message_id.clone_from(&message.header.control_id);
        if test_mode {
            s.status = ObservationStatus::Test as i32;
        }
    }
    Ok(Pcd01Waveforms { message, segments })
}

/// One OBX row with the OBR group it belongs to.
struct Row<'m> {
    seg: Segment<'m>,
    group: usize,
    sub_id: &'m str,
}

/// The segments of a split message and the OBX occurrences they used (ascending).
fn find_waveforms(
    segments: &[Segment<'_>],
    d: &Delimiters,
    receive_time_us: i64,
    terminology: &Terminology,
    config: &WaveformConfig,
) -> Result<(Vec<WaveformSegment>, Vec<u32>), Hl7Error> {
    let mut rows = Vec::new();
    // The OBR of each group (none before the first): its times are read only for a group with
    // waveforms, so a message without any decodes exactly as decode_pcd01 decodes it.
    let mut obrs = vec![None];
    for seg in segments {
        match seg.id {
            "OBR" => obrs.push(Some(*seg)),
            "OBX" => rows.push(Row {
                seg: *seg,
                group: obrs.len() - 1,
                sub_id: seg.raw(4).trim(),
            }),
            _ => {}
        }
    }
    // Rows by (group, parent sub-id): `1.2.1.7.1` is filed under `1.2.1.7`, so finding a
    // waveform row's attribute rows costs one look-up however many rows a message has.
    let mut by_parent: HashMap<(usize, &str), Vec<&Row<'_>>> = HashMap::new();
    for row in &rows {
        if let Some((parent, last)) = row.sub_id.rsplit_once('.') {
            if !parent.is_empty() && !last.is_empty() {
                by_parent.entry((row.group, parent)).or_default().push(row);
            }
        }
    }
    let mut found = Vec::new();
    let mut taken = Vec::new();
    for row in &rows {
        let value_type = component(row.seg.field(2), 1).trim();
        let multiplexed = value_type.eq_ignore_ascii_case("MA");
        if !(multiplexed || value_type.eq_ignore_ascii_case("NA")) {
            continue;
        }
        taken.push(row.seg.occurrence);
        let children = by_parent
            .get(&(row.group, row.sub_id))
            .map_or(&[][..], Vec::as_slice);
        taken.extend(children.iter().map(|r| r.seg.occurrence));
        if row.seg.raw(5).trim().is_empty() {
            continue; // no samples this time (e.g. OBX-11 X): nothing to keep
        }
        let channel = Channel {
            row,
            children,
            obr: obrs[row.group],
            d,
            config,
            multiplexed,
        };
        found.push(channel.decode(receive_time_us, terminology)?);
    }
    taken.sort_unstable();
    taken.dedup();
    Ok((found, taken))
}

/// One waveform row and what it needs to decode.
struct Channel<'a, 'm> {
    row: &'a Row<'m>,
    children: &'a [&'a Row<'m>],
    /// The OBR of the row's group (OBR-7 start, OBR-8 end of the samples' interval).
    obr: Option<Segment<'m>>,
    d: &'a Delimiters,
    config: &'a WaveformConfig,
    multiplexed: bool,
}

/// The attributes read from a waveform row's attribute rows.
#[derive(Default)]
struct Attributes {
    /// Sample rate and the OBX occurrence that gave it.
    rate: Option<(f64, u32)>,
    range: (Option<f64>, Option<f64>),
    resolution: Option<f64>,
}

impl Channel<'_, '_> {
    fn n(&self) -> u32 {
        self.row.seg.occurrence
    }

    fn decode(
        &self,
        receive_time_us: i64,
        terminology: &Terminology,
    ) -> Result<WaveformSegment, Hl7Error> {
        let seg = &self.row.seg;
        let n = self.n();
        let (mdc_code, mdc_refid) = self.channel_code()?;
        let attrs = self.attributes()?;
        let Some((rate, rate_row)) = attrs.rate else {
            return Err(Hl7Error::content(
                ErrorCode::RequiredFieldMissing,
                ErrorLocation::field("OBX", n, 3),
                format!(
                    "waveform row {n} ({}) has no sample rate: expected an attribute row with OBX-4 '{}.<n>' and OBX-3 MDC_ATTR_SAMP_RATE",
                    quote(&mdc_refid),
                    quote(self.row.sub_id)
                ),
            ));
        };
        let written = self.samples()?;
        let first_sample_time_us = match time_field(seg, 14)? {
            Some(t) => Some(t),
            None => self.obr_time(7)?,
        };
        self.check_interval(written.count, rate, rate_row, first_sample_time_us)?;
        let (unit_mdc_code, unit_ucum) = units(seg.field(6), self.d, terminology);
        let flags: Vec<&str> = repetitions(seg.field(8))
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let obx11 = component(seg.field(11), 1).trim();
        let status = row_status(false, obx11, &flags, false);
        let (low, high) = attrs.range;
        let scale_to_written = 10f64.powi(-(written.decimals as i32));
        let mut below = Runs::default();
        let mut above = Runs::default();
        for (i, &v) in written.positions.iter().enumerate() {
            let Some(v) = v else { continue };
            let value = f64::from(v) * scale_to_written;
            below.push(i, low.is_some_and(|l| value < l));
            above.push(i, high.is_some_and(|h| value > h));
        }
        let mut gaps = Runs::default();
        for (i, v) in written.positions.iter().enumerate() {
            gaps.push(i, v.is_none());
        }
        Ok(WaveformSegment {
            mdc_code,
            mdc_refid,
            containment_id: self.row.sub_id.to_owned(),
            unit_ucum,
            unit_mdc_code,
            sample_rate_hz: rate,
            sample_period_us: 1e6 / rate,
            decimal_exponent: -(written.decimals as i32),
            scale: attrs.resolution.unwrap_or(1.0),
            offset: 0.0,
            range_low: low,
            range_high: high,
            first_sample_time_us,
            receive_time_us,
            sample_count: written.count,
            samples: written.positions.iter().flatten().copied().collect(),
            gaps: gaps.done(),
            below_range: below.done(),
            above_range: above.done(),
            equipment_id: String::new(),
            source_row: seg.raw(1).trim().parse::<u32>().unwrap_or(n),
            status: status as i32,
            ..Default::default()
        })
    }

    /// A time field of the row's OBR (7 start, 8 end), `None` without an OBR or a value.
    fn obr_time(&self, field: usize) -> Result<Option<i64>, Hl7Error> {
        match &self.obr {
            Some(obr) => time_field(obr, field),
            None => Ok(None),
        }
    }

    /// OBX-3 of the waveform row: a numeric MDC code and its reference id.
    fn channel_code(&self) -> Result<(u32, String), Hl7Error> {
        let n = self.n();
        let obx3 = self.row.seg.field(3);
        let code_text = component(obx3, 1).trim();
        let refid = unescape(component(obx3, 2), self.d).trim().to_owned();
        let code = numeric_mdc_code(code_text, n, "131330^MDC_ECG_ELEC_POTL_II^MDC")?;
        Ok((code, refid))
    }

    /// Reads the attribute rows (sample rate, data range, resolution).
    fn attributes(&self) -> Result<Attributes, Hl7Error> {
        let mut attrs = Attributes::default();
        for child in self.children {
            let seg = &child.seg;
            let m = seg.occurrence;
            let obx3 = seg.field(3);
            let code = component(obx3, 1).trim();
            let refid = unescape(component(obx3, 2), self.d);
            let is = |ids: &[String]| {
                ids.iter().any(|id| {
                    id.eq_ignore_ascii_case(refid.trim())
                        || (code != "0" && !code.is_empty() && id == code)
                })
            };
            let value = repetitions(seg.field(5)).next().unwrap_or("").trim();
            if is(&self.config.sample_rate_ids) {
                let rate = self.rate(seg, value)?;
                match attrs.rate {
                    Some((earlier, row)) if earlier != rate => {
                        return Err(bad(
                            ErrorLocation::field("OBX", m, 5),
                            format!(
                                "sample rate {rate} on row {m} disagrees with sample rate {earlier} on row {row} for waveform row {}",
                                self.n()
                            ),
                        ));
                    }
                    _ => attrs.rate = Some((rate, m)),
                }
            } else if is(&self.config.data_range_ids) {
                attrs.range = self.range(seg)?;
            } else if is(&self.config.resolution_ids) {
                match parse_hl7_numeric(value) {
                    Some(r) if r > 0.0 => attrs.resolution = Some(r),
                    _ => {
                        return Err(bad(
                            ErrorLocation::field("OBX", m, 5),
                            format!(
                                "resolution '{}' on row {m} is not a number above 0",
                                quote(value)
                            ),
                        ));
                    }
                }
            }
        }
        Ok(attrs)
    }

    /// A sample-rate row's value: a number above 0 in a per-second unit.
    fn rate(&self, seg: &Segment<'_>, value: &str) -> Result<f64, Hl7Error> {
        let m = seg.occurrence;
        let at = ErrorLocation::field("OBX", m, 5);
        let Some(rate) = parse_hl7_numeric(value) else {
            return Err(bad(
                at,
                format!("sample rate '{}' on row {m} is not a number", quote(value)),
            ));
        };
        if rate <= 0.0 || rate > self.config.max_sample_rate_hz {
            return Err(bad(
                at,
                format!(
                    "sample rate {rate} on row {m} is not possible: it must be above 0 and at most {} per second",
                    self.config.max_sample_rate_hz
                ),
            ));
        }
        let obx6 = seg.field(6);
        let unit_code = component(obx6, 1).trim();
        let unit_name = component(obx6, 2).trim();
        let known = |s: &str| {
            s.is_empty()
                || s.parse::<u32>().is_ok_and(|c| RATE_UNITS.contains(&c))
                || RATE_UNIT_NAMES.iter().any(|u| u.eq_ignore_ascii_case(s))
        };
        if !(known(unit_code) && known(unit_name)) {
            return Err(bad(
                ErrorLocation::field("OBX", m, 6),
                format!(
                    "sample rate unit '{}' on row {m} is not per second: expected 264608^MDC_DIM_PER_SEC^MDC or 264640^MDC_DIM_HZ^MDC",
                    quote(seg.raw(6))
                ),
            ));
        }
        Ok(rate)
    }

    /// A data-range row's value: `low^high`, either side may be empty, low not above high.
    fn range(&self, seg: &Segment<'_>) -> Result<(Option<f64>, Option<f64>), Hl7Error> {
        let m = seg.occurrence;
        let side = |c: usize| -> Result<Option<f64>, Hl7Error> {
            let text = component(seg.field(5), c).trim();
            if text.is_empty() {
                return Ok(None);
            }
            parse_hl7_numeric(text).map(Some).ok_or_else(|| {
                bad(
                    ErrorLocation::component("OBX", m, 5, c as u32),
                    format!(
                        "data range bound '{}' on row {m} is not a number",
                        quote(text)
                    ),
                )
            })
        };
        let (low, high) = (side(1)?, side(2)?);
        if let (Some(l), Some(h)) = (low, high) {
            if l > h {
                return Err(bad(
                    ErrorLocation::field("OBX", m, 5),
                    format!("data range {l}^{h} on row {m} is inverted: low is above high"),
                ));
            }
        }
        Ok((low, high))
    }

    /// The samples of OBX-5 as written, after the bound check.
    fn samples(&self) -> Result<Written, Hl7Error> {
        let seg = &self.row.seg;
        let n = self.n();
        let raw = seg.raw(5);
        let (sep, unit) = if self.multiplexed {
            (self.d.repetition, "time points (~)")
        } else {
            (self.d.component, "samples (^)")
        };
        let count = raw.chars().filter(|&c| c == sep).count() + 1;
        if count > self.config.max_samples as usize {
            return Err(bad(
                ErrorLocation::field("OBX", n, 5),
                format!(
                    "waveform row {n} has {count} {unit}, more than the configured bound of {}; send shorter segments or raise waveforms.max_samples",
                    self.config.max_samples
                ),
            ));
        }
        let texts: Vec<&str> = if self.multiplexed {
            let mut texts = Vec::with_capacity(count);
            for (i, rep) in repetitions(seg.field(5)).enumerate() {
                if rep.contains(self.d.component) {
                    return Err(bad(
                        ErrorLocation::field("OBX", n, 5),
                        format!(
                            "MA time point {} of waveform row {n} has several channels; send one channel per OBX row",
                            i + 1
                        ),
                    ));
                }
                texts.push(rep);
            }
            texts
        } else {
            if raw.contains(self.d.repetition) {
                return Err(bad(
                    ErrorLocation::field("OBX", n, 5),
                    format!(
                        "the NA value of waveform row {n} has repetitions (~); an NA value is one list of samples separated by ^"
                    ),
                ));
            }
            seg.field(5)
                .and_then(|f| f.repeats().next())
                .map(|r| r.components().map(|c| c.raw_value()).collect())
                .unwrap_or_default()
        };
        written(&texts, n)
    }

    /// The OBR-7..OBR-8 check of [`WaveformConfig::interval_tolerance`].
    fn check_interval(
        &self,
        count: u32,
        rate: f64,
        rate_row: u32,
        first: Option<i64>,
    ) -> Result<(), Hl7Error> {
        let (Some(tolerance), Some(first)) = (self.config.interval_tolerance, first) else {
            return Ok(());
        };
        let Some(end) = self.obr_time(8)? else {
            return Ok(());
        };
        if end <= first {
            return Ok(());
        }
        let span_s = (end - first) as f64 / 1e6;
        let samples_s = f64::from(count) / rate;
        let allowed = (tolerance * span_s).max(2.0 / rate);
        if (samples_s - span_s).abs() > allowed {
            return Err(bad(
                ErrorLocation::field("OBX", rate_row, 5),
                format!(
                    "inconsistent sample rate: waveform row {} has {count} samples, which at {rate} per second last {samples_s:.3} s, but its interval (first sample to OBR-8) is {span_s:.3} s",
                    self.n()
                ),
            ));
        }
        Ok(())
    }
}

/// AE 102 at a location.
fn bad(location: ErrorLocation, message: String) -> Hl7Error {
    Hl7Error::new(
        AckCode::AE,
        ErrorCode::DataTypeError,
        Some(location),
        message,
    )
}

/// The samples of one row: per position, the integer at the row's precision or a gap.
struct Written {
    positions: Vec<Option<i32>>,
    decimals: u32,
    count: u32,
}

/// Parses each sample text exactly and brings all to the most decimal places any has.
fn written(texts: &[&str], n: u32) -> Result<Written, Hl7Error> {
    let at = |i: usize| ErrorLocation::component("OBX", n, 5, i as u32 + 1);
    let mut parsed = Vec::with_capacity(texts.len());
    let mut decimals = 0;
    for (i, text) in texts.iter().enumerate() {
        let text = text.trim();
        if text.is_empty() {
            parsed.push(None);
            continue;
        }
        let Some((mantissa, places)) = parse_decimal(text) else {
            let why = if parse_hl7_numeric(text).is_some() {
                "cannot be kept exactly: more than 9 decimal places or 18 digits"
            } else {
                "is not a number"
            };
            return Err(bad(
                at(i),
                format!(
                    "sample {} '{}' of waveform row {n} {why}",
                    i + 1,
                    quote(text)
                ),
            ));
        };
        decimals = decimals.max(places);
        parsed.push(Some((mantissa, places)));
    }
    let mut positions = Vec::with_capacity(parsed.len());
    for (i, p) in parsed.into_iter().enumerate() {
        let Some((mantissa, places)) = p else {
            positions.push(None);
            continue;
        };
        let exact = 10i64
            .checked_pow(decimals - places)
            .and_then(|f| mantissa.checked_mul(f))
            .and_then(|v| i32::try_from(v).ok());
        let Some(v) = exact else {
            return Err(bad(
                at(i),
                format!(
                    "sample {} '{}' of waveform row {n} cannot be kept exactly: at the row's {decimals} decimal places it does not fit a 32-bit sample",
                    i + 1,
                    quote(texts[i].trim())
                ),
            ));
        };
        positions.push(Some(v));
    }
    let count = u32::try_from(positions.len()).unwrap_or(u32::MAX);
    Ok(Written {
        positions,
        decimals,
        count,
    })
}

/// An HL7 number as an exact integer and its decimal places: `-0.125` → (-125, 3). `None` when
/// it is not a number or has more than [`MAX_DECIMALS`] places or 18 digits.
fn parse_decimal(text: &str) -> Option<(i64, u32)> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let places = u32::try_from(frac.len()).ok()?;
    if places > MAX_DECIMALS || int.len() + frac.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        value = value * 10 + i64::from(b - b'0');
    }
    Some((if negative { -value } else { value }, places))
}

/// Builds [`SampleRun`]s from positions visited in order.
#[derive(Default)]
struct Runs {
    runs: Vec<SampleRun>,
}

impl Runs {
    fn push(&mut self, position: usize, flagged: bool) {
        if !flagged {
            return;
        }
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        match self.runs.last_mut() {
            Some(run) if run.start + run.count == position => run.count += 1,
            _ => self.runs.push(SampleRun {
                start: position,
                count: 1,
            }),
        }
    }

    fn done(self) -> Vec<SampleRun> {
        self.runs
    }
}

#[cfg(test)]
#[path = "waveform_tests.rs"]
mod tests;
