//! What `icu-bridge consume` prints and writes: the summary, the conflicts, the verified and
//! the deduplicated JSON lines, the report as JSON.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::BridgeError;
use crate::fhir::observations_of;

use super::*;

/// One line per conflicting duplicate (empty when there is none).
pub fn render_conflicts(report: &ConsumeReport) -> String {
    let mut out = String::new();
    for c in report.conflicting() {
        let _ = writeln!(
            out,
            "  CONFLICT gateway {} device {} seq {}: partition {} offset {} differs from the \
             first sighting at partition {} offset {}",
            c.gateway,
            c.device,
            fmt_range(c.seqs.0, c.seqs.1),
            c.partition,
            c.offset,
            c.first_partition,
            c.first_offset
        );
    }
    out
}

/// The human summary printed by `icu-bridge consume`: one line per `(gateway, device)` stream,
/// then every conflicting re-delivery, then the verdict.
pub fn render_summary(topic: &str, report: &ConsumeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "topic {topic}: {} records, signatures ok {}, bad {}, unsigned {}, unparseable {}",
        report.records,
        report.signatures_ok,
        report.signatures_bad,
        report.unsigned,
        report.unparseable
    );
    for (id, unknown) in &report.unknown_keys {
        let offsets: Vec<String> = unknown
            .first_offsets
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect();
        let _ = writeln!(
            out,
            "  unknown key id {id}: {} records (first at partition:offset {}); add its public key \
             to the key directory",
            unknown.records,
            offsets.join(", ")
        );
    }
    for (gateway, device, d) in report.streams() {
        let range = match (d.first_seq, d.last_seq) {
            (Some(first), Some(last)) => format!("seq {first}..={last}"),
            _ => "no seqs".into(),
        };
        let gaps = if d.gaps.is_empty() {
            "no gaps".to_owned()
        } else {
            let list: Vec<String> = d.gaps.iter().map(|&(a, b)| fmt_range(a, b)).collect();
            format!("{} gap(s): {}", d.gaps.len(), list.join(", "))
        };
        let mut line = format!(
            "  gateway {gateway} device {device}: {} records, {} observations, {range}, {gaps}, \
             {} duplicate seqs",
            d.records, d.observations, d.duplicate_seqs
        );
        if d.duplicate_seqs > 0 {
            let _ = write!(
                line,
                " ({} identical, {} conflicting)",
                d.identical_duplicate_seqs, d.conflicts
            );
        }
        if d.signatures_bad > 0 {
            let _ = write!(line, ", {} bad signatures", d.signatures_bad);
        }
        if d.unsigned > 0 {
            let _ = write!(line, ", {} unsigned", d.unsigned);
        }
        if d.audit_entries > 0 {
            let _ = write!(line, ", {} audit entries", d.audit_entries);
            if d.audit_entries_bad.is_empty() && d.audit_chain_breaks.is_empty() {
                line.push_str(" (entry signatures and chain ok)");
            }
        }
        if d.waveform_records > 0 {
            let _ = write!(
                line,
                ", {} waveform records ({} segments, {} samples, {} gaps)",
                d.waveform_records, d.waveform_segments, d.waveform_samples, d.waveform_gaps
            );
        }
        if !d.waveforms_bad.is_empty() {
            let _ = write!(
                line,
                ", waveform records whose samples cannot be read back (partition, offset): {:?}",
                d.waveforms_bad
            );
        }
        if d.snippets > 0 {
            let _ = write!(
                line,
                ", {} alarm snippets ({} segments)",
                d.snippets, d.snippet_segments
            );
        }
        if !d.snippets_bad.is_empty() {
            let _ = write!(
                line,
                ", alarm snippets that do not hold together (partition, offset): {:?}",
                d.snippets_bad
            );
        }
        if !d.audit_entries_bad.is_empty() {
            let _ = write!(
                line,
                ", audit entries with a bad signature or seq: {:?}",
                d.audit_entries_bad
            );
        }
        if !d.audit_chain_breaks.is_empty() {
            let _ = write!(
                line,
                ", audit chain broken before seq {:?}",
                d.audit_chain_breaks
            );
        }
        let _ = writeln!(out, "{line}");
    }
    out.push_str(&render_conflicts(report));
    if report.is_clean() {
        out.push_str("result: ok (every record verified, no gaps, no conflicting re-deliveries)\n");
    } else {
        let mut reasons = Vec::new();
        if report.signatures_bad > 0 {
            reasons.push(format!("{} bad signatures", report.signatures_bad));
        }
        if report.unsigned > 0 {
            reasons.push(format!("{} unsigned", report.unsigned));
        }
        if report.unknown_key_records > 0 {
            reasons.push(format!(
                "{} records signed with an unknown key id",
                report.unknown_key_records
            ));
        }
        let gapped = report
            .streams()
            .filter(|(_, _, d)| !d.gaps.is_empty())
            .count();
        if gapped > 0 {
            reasons.push(format!("gaps in {gapped} stream(s)"));
        }
        let audit_bad = report
            .streams()
            .filter(|(_, _, d)| !d.audit_entries_bad.is_empty() || !d.audit_chain_breaks.is_empty())
            .count();
        if audit_bad > 0 {
            reasons.push(format!(
                "audit entries that do not verify or chain in {audit_bad} stream(s)"
            ));
        }
        let unreadable =
            |d: &DeviceReport| !d.waveforms_bad.is_empty() || !d.snippets_bad.is_empty();
        if report.streams().any(|(_, _, d)| unreadable(d)) {
            reasons.push("waveforms or alarm snippets that cannot be read back".into());
        }
        if report.conflicts > 0 {
            reasons.push(format!(
                "{} duplicate seqs with conflicting content",
                report.conflicts
            ));
        }
        let _ = writeln!(out, "result: FAILED ({})", reasons.join(", "));
    }
    out
}

/// Maps an I/O error on `path` to [`BridgeError::Io`].
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BridgeError + '_ {
    move |source| BridgeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates (truncates) `path` for buffered writing.
fn create_file(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, BridgeError> {
    let file = std::fs::File::create(path).map_err(io_error(path))?;
    Ok(std::io::BufWriter::new(file))
}

/// A record value as JSON when it parses, else as a (lossy UTF-8) string.
fn value_as_json(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into_owned()))
}

/// Writes every record whose signature verified as one JSON line (`partition`, `offset`, `key`,
/// `headers`, `value`; the value as JSON when it parses, else as a string), re-deliveries
/// included. Returns the count. `icu-bridge consume --out` uses
/// [`write_deduplicated_json_lines`] instead.
pub fn write_verified_json_lines(
    path: &Path,
    records: &[ConsumedRecord],
) -> Result<usize, BridgeError> {
    let io = io_error(path);
    let mut out = create_file(path)?;
    let mut written = 0;
    for record in records.iter().filter(|r| r.signature_ok == Some(true)) {
        let line = serde_json::json!({
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "headers": record.headers,
            "value": value_as_json(&record.value),
        });
        writeln!(out, "{line}").map_err(&io)?;
        written += 1;
    }
    out.flush().map_err(&io)?;
    Ok(written)
}

/// What [`write_deduplicated_json_lines`] wrote and left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DedupWrite {
    /// Lines written.
    pub written: usize,
    /// Of `written`, records that also hold seqs written before (listed in `already_written`).
    pub partial_overlaps: usize,
    /// Verified records left out: every seq they hold was written before (for a record without
    /// seqs: a record of the same stream with the same value bytes was).
    pub skipped_duplicates: usize,
    /// Records left out because their signature was not verified successfully.
    pub skipped_unverified: usize,
}

/// Writes the verified records deduplicated on `(gateway, device, seq)`, as JSON lines, in
/// `records` order.
///
/// A verified record is written when it brings at least one seq of its stream not written
/// before; a record that partly overlaps is written whole (its signed bytes cannot be split) with
/// the already-written ranges in `already_written`, so a loader keeps each seq once by dropping
/// those. Records with all their seqs written before are skipped, identical or not (conflicts are
/// in the report). Each line: `gateway`, `device`, `seq_first`, `seq_last`, `already_written`
/// (list of `[a, b]`), `partition`, `offset`, `key`, `headers`, `value` (JSON when it parses,
/// else a string) and `value_base64` (the exact signed bytes, to check `icu-signature` again).
pub fn write_deduplicated_json_lines(
    path: &Path,
    records: &[ConsumedRecord],
) -> Result<DedupWrite, BridgeError> {
    use base64::Engine as _;

    let io = io_error(path);
    let mut out = create_file(path)?;
    let mut summary = DedupWrite::default();
    let mut sightings: HashMap<StreamKey, Sightings> = HashMap::new();
    let mut seqless: BTreeSet<(StreamKey, [u8; 32])> = BTreeSet::new();
    for (idx, record) in records.iter().enumerate() {
        if record.signature_ok != Some(true) {
            summary.skipped_unverified += 1;
            continue;
        }
        let stream = record.stream_key();
        let parsed = (record.header_range().is_none() && record.is_fhir())
            .then(|| observations_of(&record.value).ok())
            .flatten();
        let ranges = seq_ranges(record, parsed.as_deref());
        let mut already = Vec::new();
        let new = if ranges.is_empty() {
            seqless.insert((stream.clone(), Sha256::digest(&record.value).into()))
        } else {
            let seen_before = sightings.entry(stream.clone()).or_default();
            let mut fresh = 0;
            for (first, last) in ranges {
                let (seen, n) = seen_before.insert(first, last, idx);
                fresh += n;
                for (a, b, _) in seen {
                    push_range(&mut already, a, b);
                }
            }
            fresh > 0
        };
        if !new {
            summary.skipped_duplicates += 1;
            continue;
        }
        if !already.is_empty() {
            summary.partial_overlaps += 1;
        }
        let line = serde_json::json!({
            "gateway": stream.gateway,
            "device": stream.device,
            "seq_first": record.seq_first,
            "seq_last": record.seq_last,
            "already_written": already,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "headers": record.headers,
            "value": value_as_json(&record.value),
            "value_base64": base64::engine::general_purpose::STANDARD.encode(&record.value),
        });
        writeln!(out, "{line}").map_err(&io)?;
        summary.written += 1;
    }
    out.flush().map_err(&io)?;
    Ok(summary)
}

/// Writes the report as pretty JSON (the `--report` file of `icu-bridge consume`).
pub fn write_report_json(path: &Path, report: &ConsumeReport) -> Result<(), BridgeError> {
    let io = io_error(path);
    let mut text = serde_json::to_string_pretty(report)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    text.push('\n');
    std::fs::write(path, text).map_err(&io)
}
