//! HL7 v2 structure: delimiter validation, a zero-copy splitter (segments, fields, repetitions,
//! components, subcomponents) and escape sequences.
//!
//! Owns what the header parser, the PCD-01 and ADT decoders and the ACK builder share. It never
//! interprets content and never panics on any input.
//!
//! The splitter: [`parse`] checks every line of a message (segment separators `\r`, `\n` or
//! `\r\n`; blank lines skipped; a segment id of 3 upper-case letters or digits followed by the
//! field separator, else AE 100) and cuts each segment at its field separators into `&str`
//! slices of the text, kept in one buffer per message (a byte loop: delimiters are ASCII).
//! Repetitions, components and subcomponents are split on demand ([`Field::repeats`],
//! [`Field::component`], ...), again as slices: no value is copied and nothing is allocated per
//! segment or field. Splitting uses the delimiters the message declares in MSH-1
//! and MSH-2 ([`Delimiters`]), and numbers MSH fields as hl7-parser does: MSH-1 is the field
//! separator and MSH-2 the encoding characters, each a single value that is never split. (With
//! an HL7 v2.7 truncation character, MSH-2 is all five encoding characters; hl7-parser takes
//! four and returns the fifth as an extra field before MSH-3. And for an MSH that ends at MSH-2,
//! hl7-parser returns an empty MSH-3 where the splitter has none; both read as "".) Escape sequences are not
//! interpreted while splitting (`\F\` is not a field separator), only by [`unescape`].
//!
//! Why not hl7-parser on the hot path (the product card names it, so it stays the reference: the
//! differential tests `splitter_matches_hl7_parser_*` in tests.rs and adt_tests.rs check that
//! for well-formed messages, fixtures and generated ones with random delimiters, both return the
//! same segments, fields, repetitions, components and subcomponents): a profile of durable
//! ingest put hl7-parser and nom at ~13 % of the gateway's CPU, plus allocator time. It parses
//! with nom one character at a time and allocates a `Vec` per field, repetition and component.
//! `cargo bench -p icu-drivers --bench pcd01` (2 KB PCD-01 message, 19 segments, on the shared
//! 2-core development machine) measured:
//!
//! | case | before | after |
//! |---|---|---|
//! | (a) `hl7_parser::Message::parse` alone | 71–104 µs (110–330 µs in earlier runs) | (unchanged) |
//! | (c) this splitter, every value visited | | 7–10 µs |
//! | (b) `decode_pcd01`, whole decode | 132 µs | 15–21 µs |
//!
//! hl7-parser also silently drops every segment after one it cannot read
//! (`hl7_parser_drops_segments_after_an_unparseable_one` in tests.rs), which needed a guard
//! (pre-processing the text into a normalised copy, then counting the segments it returned) that
//! this splitter does not: it reads every line or refuses the message.
//!
//! Escape sequences are decoded here, not with hl7-parser's `Separators::decode`, which misreads
//! `\Xhh\`, `\H\`, `\.br\`, unknown and unterminated escapes and panics on multi-byte text
//! before an escape (`hl7_parser_unescape_is_not_usable` in tests.rs).

use std::borrow::Cow;

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
        // MSH-1 and up to five encoding characters, without allocating (this runs on every
        // frame); a sixth encoding character makes `len` 7 and the check fail.
        let mut all = [field; 6];
        let mut len = 1;
        for c in chars.take_while(|&c| c != field) {
            if len == all.len() {
                len += 1;
                break;
            }
            all[len] = c;
            len += 1;
        }
        // hl7-parser reads MSH-1/MSH-2 as five ASCII characters.
        let all = &all[..len.min(6)];
        let distinct = all.iter().enumerate().all(|(i, c)| !all[..i].contains(c));
        if !(5..=6).contains(&len) || !all.iter().all(char::is_ascii_punctuation) || !distinct {
            let shown: String = std::iter::once(field)
                .chain(line.chars().skip(4).take_while(|&c| c != field))
                .collect();
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
            component: all[1],
            repetition: all[2],
            escape: all[3],
            subcomponent: all[4],
            truncation: all.get(5).copied(),
        })
    }
}

/// The separators below the field level, as a field's values are split by them. Delimiters are
/// ASCII ([`Delimiters::from_msh`] accepts ASCII punctuation only), so values are split by byte
/// and every cut is on a character boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seps {
    repetition: u8,
    component: u8,
    subcomponent: u8,
}

impl Seps {
    fn of(d: &Delimiters) -> Self {
        Self {
            repetition: ascii(d.repetition),
            component: ascii(d.component),
            subcomponent: ascii(d.subcomponent),
        }
    }

    /// For MSH-1 and MSH-2, which are single values: CR never occurs inside a segment (it ends
    /// one), so splitting by it yields the whole value.
    const UNSPLIT: Self = Self {
        repetition: b'\r',
        component: b'\r',
        subcomponent: b'\r',
    };
}

/// A delimiter as a byte; a non-ASCII one (which `from_msh` refuses) would split nothing.
fn ascii(c: char) -> u8 {
    u8::try_from(c).ok().filter(u8::is_ascii).unwrap_or(b'\r')
}

/// The parts of `text` between occurrences of the ASCII byte `sep` (at least one, possibly
/// empty), as `str::split` would return them, without its per-call searcher setup: values are
/// short, so a plain byte loop is the fastest search.
#[derive(Debug, Clone)]
struct Split<'m> {
    rest: Option<&'m str>,
    sep: u8,
}

fn split(text: &str, sep: u8) -> Split<'_> {
    Split {
        rest: Some(text),
        sep,
    }
}

impl<'m> Iterator for Split<'m> {
    type Item = &'m str;

    fn next(&mut self) -> Option<&'m str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == self.sep) {
            // `sep` is ASCII: both slices start and end on character boundaries.
            Some(i) => {
                self.rest = rest.get(i + 1..);
                rest.get(..i)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// One field as written (a slice of the message text); repetitions, components and
/// subcomponents are split from it on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field<'m> {
    raw: &'m str,
    seps: Seps,
}

impl<'m> Field<'m> {
    /// A field value written with the delimiters `d` (e.g. a header value kept as written).
    pub fn new(raw: &'m str, d: &Delimiters) -> Self {
        Self {
            raw,
            seps: Seps::of(d),
        }
    }

    /// The field as written (escape sequences not decoded).
    pub fn raw_value(&self) -> &'m str {
        self.raw
    }

    /// The repetitions of the field (at least one, possibly empty).
    pub fn repeats(&self) -> impl Iterator<Item = Repeat<'m>> + use<'m> {
        let seps = self.seps;
        split(self.raw, seps.repetition).map(move |raw| Repeat { raw, seps })
    }

    /// Component `n` (1-based) of the first repetition.
    pub fn component(&self, n: usize) -> Option<Component<'m>> {
        self.repeats().next()?.component(n)
    }
}

/// One repetition of a field, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Repeat<'m> {
    raw: &'m str,
    seps: Seps,
}

impl<'m> Repeat<'m> {
    pub fn raw_value(&self) -> &'m str {
        self.raw
    }

    /// The components of the repetition (at least one, possibly empty).
    pub fn components(&self) -> impl Iterator<Item = Component<'m>> + use<'m> {
        let seps = self.seps;
        split(self.raw, seps.component).map(move |raw| Component { raw, seps })
    }

    /// Component `n` (1-based).
    pub fn component(&self, n: usize) -> Option<Component<'m>> {
        self.components().nth(n.checked_sub(1)?)
    }
}

/// One component, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Component<'m> {
    raw: &'m str,
    seps: Seps,
}

impl<'m> Component<'m> {
    pub fn raw_value(&self) -> &'m str {
        self.raw
    }

    /// The subcomponents as written (at least one, possibly empty).
    pub fn subcomponents(&self) -> impl Iterator<Item = &'m str> + use<'m> {
        split(self.raw, self.seps.subcomponent)
    }
}

/// One segment: its id, its 1-based occurrence among segments with that id, its 1-based line
/// number in the message (blank lines not counted) and its fields as slices of the text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'m> {
    pub id: &'m str,
    pub occurrence: u32,
    pub index: usize,
    /// `fields[0]` is field 1: a range of the message's one field buffer (see [`parse`]).
    fields: &'m [&'m str],
    seps: Seps,
}

/// Appends the fields of one segment line (a 3-character id, alone or followed by the field
/// separator of `d`) to `fields`. An `MSH` line is numbered as hl7-parser does: MSH-1 is the
/// field separator itself and MSH-2 the encoding characters.
fn split_fields<'m>(line: &'m str, d: &Delimiters, fields: &mut Vec<&'m str>) {
    let sep = ascii(d.field);
    let rest = line.get(3..).unwrap_or("");
    if rest.as_bytes().first() == Some(&sep) {
        // `sep` is ASCII: one byte.
        let (msh1, values) = rest.split_at(1);
        if line.starts_with("MSH") {
            fields.push(msh1);
        }
        fields.extend(split(values, sep));
    }
}

impl<'m> Segment<'m> {
    /// Field `n` (1-based, HL7 numbering: for MSH, MSH-1 is the field separator).
    pub fn field(&self, n: usize) -> Option<Field<'m>> {
        let raw = *self.fields.get(n.checked_sub(1)?)?;
        let seps = if self.id == "MSH" && n <= 2 {
            Seps::UNSPLIT
        } else {
            self.seps
        };
        Some(Field { raw, seps })
    }

    /// Field `n` as written (escape sequences not decoded), "" if absent.
    pub fn raw(&self, n: usize) -> &'m str {
        self.field(n).map_or("", |f| f.raw_value())
    }

    /// The number of fields (for MSH, including MSH-1 and MSH-2).
    #[cfg(test)]
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }
}

/// Splits the MSH line of a message (as found by the header step, delimiters checked);
/// `fields` is the buffer its field slices are kept in.
pub(crate) fn split_msh<'m>(
    line: &'m str,
    d: &Delimiters,
    fields: &'m mut Vec<&'m str>,
) -> Segment<'m> {
    fields.clear();
    fields.reserve(2 + line.bytes().filter(|&b| b == ascii(d.field)).count());
    split_fields(line, d, fields);
    Segment {
        id: line.get(..3).unwrap_or(line),
        occurrence: 1,
        index: 1,
        fields,
        seps: Seps::of(d),
    }
}

/// Component `n` (1-based) of the first repetition of a field as written, "" if absent.
pub(crate) fn component<'m>(field: Option<Field<'m>>, n: usize) -> &'m str {
    field
        .and_then(|f| f.component(n))
        .map_or("", |c| c.raw_value())
}

/// The repetitions of a field as written.
pub(crate) fn repetitions<'m>(field: Option<Field<'m>>) -> impl Iterator<Item = &'m str> {
    field
        .into_iter()
        .flat_map(|f| f.repeats().map(|r| r.raw_value()))
}

/// Splits a whole message (starting at `MSH`, already valid UTF-8) into its segments. The field
/// slices of all segments are kept in `fields`, one buffer per message (sized by one count of
/// the separators), so splitting allocates a few vectors per message, none per segment or field.
///
/// Segment separators `\r`, `\n` and `\r\n` are all accepted; blank lines are skipped. Every
/// other line must be a segment: a 3-character id of upper-case letters or digits, alone or
/// followed by the field separator, else the message is refused (AE 100).
pub(crate) fn parse<'t>(
    text: &'t str,
    d: &Delimiters,
    fields: &'t mut Vec<&'t str>,
) -> Result<Vec<Segment<'t>>, Hl7Error> {
    let sep = ascii(d.field);
    let (mut lines, mut separators) = (1, 1);
    for b in text.bytes() {
        lines += usize::from(b == b'\r' || b == b'\n');
        separators += usize::from(b == sep);
    }
    fields.clear();
    fields.reserve(separators + lines);
    // First the ids and the end of each segment's fields in the buffer, then the segments,
    // once the buffer no longer grows.
    let mut found: Vec<(&'t str, u32, usize)> = Vec::with_capacity(lines);
    let mut seen: Vec<(&str, u32)> = Vec::new();
    for line in split(text, b'\r').flat_map(|line| split(line, b'\n')) {
        if line.trim().is_empty() {
            continue;
        }
        let index = found.len() + 1;
        let id = line.get(..3).filter(|id| {
            id.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
        let Some(id) = id else {
            return Err(not_a_segment(index, line));
        };
        let rest = &line[3..];
        if !(rest.is_empty() || rest.starts_with(d.field)) {
            return Err(not_a_segment(index, line));
        }
        let occurrence = match seen.iter_mut().find(|(seen_id, _)| *seen_id == id) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((id, 1));
                1
            }
        };
        split_fields(line, d, fields);
        found.push((id, occurrence, fields.len()));
    }
    let fields: &'t [&'t str] = fields;
    let seps = Seps::of(d);
    let mut start = 0;
    let segments = found
        .into_iter()
        .enumerate()
        .map(|(i, (id, occurrence, end))| {
            let segment = Segment {
                id,
                occurrence,
                index: i + 1,
                fields: fields.get(start..end).unwrap_or_default(),
                seps,
            };
            start = end;
            segment
        })
        .collect();
    Ok(segments)
}

/// The guard that `parse` needed while it used hl7-parser, kept for the tests that use
/// hl7-parser as the reference: every non-blank line of the message must come back as a segment
/// with the same id, in order; otherwise AE 100 at the first segment that did not.
#[cfg(test)]
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
        super::error::AckCode::AE,
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
        super::error::AckCode::AE,
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
