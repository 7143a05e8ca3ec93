//! HL7 v2 structure on top of hl7-parser: delimiter validation, segment access with the guard
//! against hl7-parser's silent truncation, and escape sequences.
//!
//! Owns what the header parser, the PCD-01 decoder and the ACK builder share. It never
//! interprets content and never panics on any input. Escape sequences are decoded here, not with
//! hl7-parser's `Separators::decode`, which misreads `\Xhh\`, `\H\`, `\.br\`, unknown
//! and unterminated escapes and panics on multi-byte text before an escape
//! (`hl7_parser_unescape_is_not_usable` in tests.rs).

use std::borrow::Cow;

use hl7_parser::message::Field;

use super::error::{ErrorCode, ErrorLocation, Hl7Error};

/// The five delimiters declared in MSH-1 and MSH-2 (and the v2.7 truncation character, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// The optional fifth encoding character of HL7 v2.7+ (e.g. `#`).
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// Reads MSH-1 and MSH-2 from the MSH line (which starts with "MSH").
    pub fn from_msh(line: &str) -> Result<Self, Hl7Error> {
        let at_msh2 = || Some(ErrorLocation::field("MSH", 1, 2));
        let mut chars = line.chars().skip(3);
        let Some(field) = chars.next() else {
            return Err(Hl7Error::reject(
                ErrorCode::DataTypeError,
                Some(ErrorLocation::field("MSH", 1, 1)),
                "MSH segment ends before its field separator (MSH-1)".into(),
            ));
        };
        let encoding: Vec<char> = chars.take_while(|&c| c != field).collect();
        let mut all = vec![field];
        all.extend_from_slice(&encoding);
        // hl7-parser reads MSH-1/MSH-2 as five ASCII characters.
        let usable = |c: &char| c.is_ascii_punctuation();
        let distinct = all.iter().enumerate().all(|(i, c)| !all[..i].contains(c));
        if !(4..=5).contains(&encoding.len()) || !all.iter().all(usable) || !distinct {
            let shown: String = all.iter().collect();
            return Err(Hl7Error::reject(
                ErrorCode::DataTypeError,
                at_msh2(),
                format!(
                    "MSH-1/MSH-2 delimiters '{}' are not valid: expected a field separator and four distinct encoding characters such as '|^~\\&'",
                    quote(&shown)
                ),
            ));
        }
        Ok(Self {
            field,
            component: encoding[0],
            repetition: encoding[1],
            escape: encoding[2],
            subcomponent: encoding[3],
            truncation: encoding.get(4).copied(),
        })
    }
}

/// One segment as hl7-parser read it, with its 1-based occurrence among segments with that id
/// and its 1-based line number in the message (blank lines not counted).
#[derive(Debug)]
pub(crate) struct Segment<'m> {
    pub id: &'m str,
    pub occurrence: u32,
    pub index: usize,
    parsed: hl7_parser::message::Segment<'m>,
}

impl<'m> Segment<'m> {
    /// Field `n` (1-based, HL7 numbering: for MSH, MSH-1 is the field separator).
    pub fn field(&self, n: usize) -> Option<&Field<'m>> {
        if n == 0 {
            return None;
        }
        self.parsed.field(n)
    }

    /// Field `n` as written (escape sequences not decoded), "" if absent.
    pub fn raw(&self, n: usize) -> &'m str {
        self.field(n).map_or("", Field::raw_value)
    }
}

/// Component `n` (1-based) of the first repetition of a field as written, "" if absent.
pub(crate) fn component<'m>(field: Option<&Field<'m>>, n: usize) -> &'m str {
    field
        .filter(|_| n > 0)
        .and_then(|f| f.component(n))
        .map_or("", |c| c.raw_value())
}

/// The repetitions of a field as written.
pub(crate) fn repetitions<'a, 'm: 'a>(
    field: Option<&'a Field<'m>>,
) -> impl Iterator<Item = &'m str> + 'a {
    field
        .into_iter()
        .flat_map(|f| f.repeats().map(|r| r.raw_value()))
}

/// Parses a whole message (starting at `MSH`, already valid UTF-8) with hl7-parser.
///
/// Segment separators `\r`, `\n` and `\r\n` are all accepted; blank lines are skipped.
///
/// hl7-parser 0.3 stops at the first line it cannot read as a segment (a blank line, a segment
/// id without a field separator, ...) and silently returns only the segments before it
/// (`hl7_parser_drops_segments_after_an_unparseable_one` in tests.rs). So every line is first
/// checked here: its id must be 3 upper-case letters or digits followed by the field separator
/// (else AE 100); blank lines are removed and a bare segment id gets its field separator before
/// the text goes to hl7-parser; and if hl7-parser still returns fewer segments than the message
/// has, the whole message is refused (AE 100) rather than half-accepted.
pub(crate) fn parse<'t>(
    text: &str,
    d: &Delimiters,
    normalized: &'t mut String,
) -> Result<Vec<Segment<'t>>, Hl7Error> {
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .filter(|line| !line.trim().is_empty())
        .collect();
    normalized.clear();
    normalized.reserve(text.len() + lines.len());
    for (i, line) in lines.iter().enumerate() {
        let id = line.get(..3).filter(|id| {
            id.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
        let rest = id.map(|_| &line[3..]);
        let (Some(_), Some(rest)) = (id, rest) else {
            return Err(not_a_segment(i + 1, line));
        };
        if !(rest.is_empty() || rest.starts_with(d.field)) {
            return Err(not_a_segment(i + 1, line));
        }
        if i > 0 {
            normalized.push('\r');
        }
        normalized.push_str(line);
        if rest.is_empty() {
            normalized.push(d.field);
        }
    }
    let parsed = hl7_parser::Message::parse(normalized)
        .map(|m| m.segments)
        .unwrap_or_default();
    check_all_segments_returned(&lines, &parsed)?;

    let mut seen: Vec<(&str, u32)> = Vec::new();
    let segments = parsed
        .into_iter()
        .enumerate()
        .map(|(i, parsed)| {
            let occurrence = match seen.iter_mut().find(|(id, _)| *id == parsed.name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((parsed.name, 1));
                    1
                }
            };
            Segment {
                id: parsed.name,
                occurrence,
                index: i + 1,
                parsed,
            }
        })
        .collect();
    Ok(segments)
}

/// The guard against hl7-parser's silent truncation: every non-blank line of the message must
/// come back as a segment with the same id, in order; otherwise AE 100 at the first segment that
/// did not.
pub(crate) fn check_all_segments_returned(
    lines: &[&str],
    parsed: &[hl7_parser::message::Segment<'_>],
) -> Result<(), Hl7Error> {
    let id = |line: &str| line.get(..3).unwrap_or(line).to_owned();
    let Some(missing) = (0..lines.len()).find(|&i| {
        parsed
            .get(i)
            .is_none_or(|seg| Some(seg.name) != lines[i].get(..3))
    }) else {
        return Ok(());
    };
    let line = lines[missing];
    let segment = id(line);
    let occurrence = lines[..=missing]
        .iter()
        .filter(|l| l.get(..3) == line.get(..3))
        .count();
    Err(Hl7Error::new(
        super::AckCode::AE,
        ErrorCode::SegmentSequenceError,
        Some(ErrorLocation {
            segment,
            sequence: u32::try_from(occurrence).unwrap_or(u32::MAX),
            field: None,
            component: None,
        }),
        format!(
            "segment {} ('{}') could not be parsed; message refused, nothing stored",
            missing + 1,
            quote(line)
        ),
    ))
}

fn not_a_segment(index: usize, line: &str) -> Hl7Error {
    Hl7Error::new(
        super::AckCode::AE,
        ErrorCode::SegmentSequenceError,
        None,
        format!(
            "segment {index} ('{}') is not an HL7 segment: expected a 3-character segment id followed by the field separator",
            quote(line)
        ),
    )
}

/// Decodes HL7 escape sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh..\ \.br\`); formatting escapes
/// (`\H\ \N\`, `\.sp\` ...) are dropped; anything else is kept as written.
pub(crate) fn unescape<'a>(value: &'a str, d: &Delimiters) -> Cow<'a, str> {
    if !value.contains(d.escape) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(d.escape) {
        out.push_str(&rest[..start]);
        let after = &rest[start + d.escape.len_utf8()..];
        let Some(end) = after.find(d.escape) else {
            // Unterminated escape: keep literally.
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(d.escape),
            ".br" => out.push('\n'),
            "H" | "N" => {}
            s if s.starts_with(".sp") || s.starts_with(".in") || s.starts_with(".ti") => {}
            s if s.starts_with('X') && decode_hex(&s[1..]).is_some() => {
                if let Some(bytes) = decode_hex(&s[1..]) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            _ => {
                out.push(d.escape);
                out.push_str(seq);
                out.push(d.escape);
            }
        }
        rest = &after[end + d.escape.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some((hex_digit(*hi)? << 4) | hex_digit(*lo)?),
            _ => None,
        })
        .collect()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|v| u8::try_from(v).ok())
}

/// Encodes free text for a field written with the standard delimiters `|^~\&`: delimiters become
/// escape sequences, CR/LF and other control characters become spaces (they would end the
/// segment or break MLLP framing).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\\' => out.push_str("\\E\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Re-encodes a raw field written with the sender's delimiters into the standard ones, so it can
/// be echoed into an ACK.
pub(crate) fn to_standard_delimiters<'a>(raw: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let std = Delimiters::default();
    if *d == std {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c == d.component {
            out.push(std.component);
        } else if c == d.repetition {
            out.push(std.repetition);
        } else if c == d.escape {
            out.push(std.escape);
        } else if c == d.subcomponent {
            out.push(std.subcomponent);
        } else {
            match c {
                '|' => out.push_str("\\F\\"),
                '^' => out.push_str("\\S\\"),
                '&' => out.push_str("\\T\\"),
                '~' => out.push_str("\\R\\"),
                '\\' => out.push_str("\\E\\"),
                c => out.push(c),
            }
        }
    }
    Cow::Owned(out)
}

/// A device-provided value made safe to quote in an error message: at most 40 characters,
/// control characters shown as `?`.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}
