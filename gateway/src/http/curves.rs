//! Live curves for the bed view (issue 19): `GET /api/beds/{bed}/waves`, the bed's waveform
//! segments as they reach the ring ([`crate::waves::WaveformRing`]), and
//! `GET /api/beds/{bed}/alarms/{alarm_id}/snippet?start_us=`, an alarm's ±15 s of curves.
//!
//! Delivery: server-sent events, like the page's alarm feed (`/api/events`), not a WebSocket:
//! the curves flow one way only, the browser's `EventSource` brings the session cookie and
//! reconnects by itself, the CSP (`connect-src 'self'`) and the Host/Origin checks already cover
//! it, and no new crate is needed. Every [`TICK`] the stream sends one `event: frame` with what
//! arrived since the last one (an idle bed gets an empty frame every second, the page's clock).
//!
//! A frame is JSON: `now_us` (the gateway's clock), `dropped` (segments this stream skipped so
//! far), `channels` (each channel once, when it first appears: `c`, its number in this stream,
//! device, MDC code and reference id, UCUM unit, sample rate, data range in physical units)
//! and `segs`: per segment `c`, `t0` (the first position's time on the gateway's timeline,
//! [`crate::waves::start_us`]), `p` (sample period, µs), `n` (positions, present and missing),
//! `gaps` (`[start, count]` runs of positions without a sample), `k` and `o` (physical value =
//! sample × k + o), `f` (`i16` or `i32`) and `d`: the present samples as little-endian
//! integers, base64. The integers are the device's own, bit for bit; a gap stays a gap.
//!
//! Guarantees: the caller needs [`Permission::Read`] and opening a stream is one audited read
//! of patient data (throttled per session like `/api/beds`), never one per frame; a person's
//! stream ends when the session locks or ends. At most `http.max_event_streams` curve streams
//! are open at once (503 beyond), counted apart from the alarm streams. Bounded: the stream
//! reads the ring only when the connection has room (actix stops polling it while its write
//! buffer is full), and a frame carries at most [`MAX_FRAME_SAMPLES`] samples: a browser that
//! fell behind gets the newest segments and the older ones are skipped and counted (`dropped`
//! in the frame, `curve_streams` in `/api/status`, a warning in the log), so the gateway
//! never buffers without limit for a slow page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use icu_protos::v1::WaveformSegment;

use super::guard::{self, AuthState, Caller, Principal};
use super::limits::{check_lengths, MAX_ALARM_ID_CHARS, MAX_NAME_CHARS};
use super::streams::{EventStreams, StreamSlot};
use crate::auth::{Lookup, Permission};
use crate::clock::now_us;
use crate::live::LiveState;
use crate::waves::{end_us, start_us, ChannelKey, Kept};

/// How often a stream sends what arrived.
pub const TICK: Duration = Duration::from_millis(200);
/// An idle stream still sends an (empty) frame this often.
pub const IDLE_FRAME: Duration = Duration::from_secs(1);
/// Most samples in one frame (about 9 s of a bed with three ECG leads, pleth and ABP); older
/// pending segments beyond it are skipped and counted.
pub const MAX_FRAME_SAMPLES: usize = 16_384;
/// A new stream starts with the bed's curves of this long before the newest sample, so the
/// page draws at once.
pub const BACKFILL_US: i64 = 4_000_000;
/// Half the width of an alarm snippet cut from the ring while the built one is not there.
pub const SNIPPET_HALF_US: i64 = 15_000_000;

/// The open curve streams and what they skipped.
#[derive(Debug)]
pub struct CurveStreams {
    slots: Arc<EventStreams>,
    /// Segments skipped for pages that fell behind, all streams together.
    pub dropped_segments: AtomicU64,
}

impl CurveStreams {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: EventStreams::new(max),
            dropped_segments: AtomicU64::new(0),
        })
    }

    /// `/api/status` `curve_streams`: streams open now, and segments skipped so far.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "open": self.slots.open(),
            "max": self.slots.max,
            "dropped_segments": self.dropped_segments.load(Ordering::Relaxed),
        })
    }
}

/// Keeps the newest segments within `max_samples` (by arrival); returns them, oldest first,
/// and how many older ones were left out.
pub fn bound(mut kept: Vec<Kept>, max_samples: usize) -> (Vec<Kept>, u64) {
    let mut total = 0usize;
    let mut first = kept.len();
    for (i, k) in kept.iter().enumerate().rev() {
        total += k.segment.sample_count as usize;
        if total > max_samples && i + 1 < kept.len() {
            break;
        }
        first = i;
    }
    let dropped = first as u64;
    (kept.split_off(first), dropped)
}

/// The physical value per written integer: `10^decimal_exponent × scale`.
fn factor(s: &WaveformSegment) -> f64 {
    let scale = if s.scale == 0.0 { 1.0 } else { s.scale };
    10f64.powi(s.decimal_exponent) * scale
}

/// The present samples as little-endian `i16` when they all fit, else `i32`, base64.
pub fn pack_samples(samples: &[i32]) -> (&'static str, String) {
    let b64 = &base64::engine::general_purpose::STANDARD;
    if samples.iter().all(|&v| i16::try_from(v).is_ok()) {
        let bytes: Vec<u8> = samples
            .iter()
            .flat_map(|&v| (v as i16).to_le_bytes())
            .collect();
        ("i16", b64.encode(bytes))
    } else {
        let bytes: Vec<u8> = samples.iter().flat_map(|&v| v.to_le_bytes()).collect();
        ("i32", b64.encode(bytes))
    }
}

/// One segment of a frame or a snippet, under channel number `c`.
pub fn segment_json(c: usize, s: &WaveformSegment) -> serde_json::Value {
    let (f, d) = pack_samples(&s.samples);
    serde_json::json!({
        "c": c,
        "t0": start_us(s),
        "p": s.sample_period_us,
        "n": s.sample_count,
        "gaps": s.gaps.iter().map(|r| [r.start, r.count]).collect::<Vec<_>>(),
        "k": factor(s),
        "o": s.offset,
        "f": f,
        "d": d,
    })
}

/// A channel's description, from its first segment.
pub fn channel_json(c: usize, s: &WaveformSegment) -> serde_json::Value {
    let k = factor(s);
    serde_json::json!({
        "c": c,
        "device": s.device_id,
        "code": s.mdc_code,
        "refid": s.mdc_refid,
        "unit": s.unit_ucum,
        "rate_hz": s.sample_rate_hz,
        "low": s.range_low.map(|v| v * k + s.offset),
        "high": s.range_high.map(|v| v * k + s.offset),
    })
}

/// Numbers the channels of one stream (or one snippet) and turns segments into JSON.
#[derive(Debug, Default)]
pub struct Framer {
    channels: Vec<ChannelKey>,
}

impl Framer {
    /// `(new channels, segments)` of these segments.
    pub fn encode<'a>(
        &mut self,
        segments: impl IntoIterator<Item = &'a WaveformSegment>,
    ) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let mut channels = Vec::new();
        let mut segs = Vec::new();
        for s in segments {
            let key = ChannelKey::of(s);
            let c = match self.channels.iter().position(|k| *k == key) {
                Some(c) => c,
                None => {
                    self.channels.push(key);
                    let c = self.channels.len() - 1;
                    channels.push(channel_json(c, s));
                    c
                }
            };
            segs.push(segment_json(c, s));
        }
        (channels, segs)
    }
}

/// Whether a person's session still stands (a token's stream needs no session).
fn session_alive(session: &Option<(String, web::Data<AuthState>)>) -> bool {
    match session {
        Some((token, auth)) => matches!(
            auth.auth.sessions.lookup(token, now_us(), false),
            Lookup::Active(_)
        ),
        None => true,
    }
}

/// The bed's segments to start a stream with: those ending within [`BACKFILL_US`] of its
/// newest sample; and the cursor after everything kept.
fn backfill(live: &LiveState, bed: &str) -> (Vec<Kept>, u64) {
    let (all, cursor) = live.waves.since(bed, 0);
    let newest = all.iter().map(|k| end_us(&k.segment)).max().unwrap_or(0);
    let recent = all
        .into_iter()
        .filter(|k| end_us(&k.segment) >= newest - BACKFILL_US)
        .collect();
    (recent, cursor)
}

struct StreamState {
    live: Arc<LiveState>,
    bed: String,
    cursor: u64,
    pending: Vec<Kept>,
    framer: Framer,
    dropped: u64,
    first: bool,
    session: Option<(String, web::Data<AuthState>)>,
    streams: Arc<CurveStreams>,
    _slot: StreamSlot,
}

impl StreamState {
    /// Waits for the next frame to send (`None`: the session ended).
    async fn next_frame(&mut self) -> Option<String> {
        let mut idle = Duration::ZERO;
        loop {
            if !self.first {
                tokio::time::sleep(TICK).await;
                idle += TICK;
            }
            self.first = false;
            if !session_alive(&self.session) {
                return None;
            }
            let (mut fresh, next) = self.live.waves.since(&self.bed, self.cursor);
            self.cursor = next;
            let mut pending = std::mem::take(&mut self.pending);
            pending.append(&mut fresh);
            if pending.is_empty() && idle < IDLE_FRAME {
                continue;
            }
            let (send, dropped) = bound(pending, MAX_FRAME_SAMPLES);
            if dropped > 0 {
                self.dropped += dropped;
                self.streams
                    .dropped_segments
                    .fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(bed = %self.bed, dropped, total = self.dropped, "a page fell behind the live curves: older segments skipped");
            }
            let (channels, segs) = self.framer.encode(send.iter().map(|k| &*k.segment));
            let frame = serde_json::json!({
                "now_us": now_us(),
                "dropped": self.dropped,
                "channels": channels,
                "segs": segs,
            });
            return Some(format!("event: frame\ndata: {frame}\n\n"));
        }
    }
}

/// Lets a caller read a bed's curves: the permission, the lengths of what the request
/// carries, a configured bed (404 otherwise), and the audited read (throttled per session).
async fn admit(
    live: &LiveState,
    auth: &AuthState,
    caller: &Caller,
    lengths: &[(&str, &str, usize)],
    bed: &str,
    endpoint: &'static str,
    what: &str,
) -> Result<(), HttpResponse> {
    caller.require(Permission::Read)?;
    if let Some(refused) = check_lengths(lengths) {
        return Err(refused);
    }
    if !live.beds().iter().any(|b| b.id == bed) {
        return Err(HttpResponse::NotFound().body(format!("no bed '{bed}' is configured\n")));
    }
    auth.audit_read(caller, endpoint, what).await
}

/// `GET /api/beds/{bed}/waves`: the bed's live curves as server-sent events (module docs).
pub(super) async fn stream(
    live: web::Data<Arc<LiveState>>,
    auth: web::Data<AuthState>,
    streams: web::Data<Arc<CurveStreams>>,
    caller: Caller,
    req: HttpRequest,
    bed: web::Path<String>,
) -> HttpResponse {
    let bed = bed.into_inner();
    if let Err(r) = admit(
        &live,
        &auth,
        &caller,
        &[("bed", &bed, MAX_NAME_CHARS)],
        &bed,
        "/api/beds/{bed}/waves",
        &format!("live curves of bed {bed}"),
    )
    .await
    {
        return r;
    }
    let Some(slot) = streams.slots.try_open() else {
        tracing::warn!(
            max = streams.slots.max,
            "curve stream refused: too many open"
        );
        return HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "30"))
            .body(format!(
                "too many curve streams open (at most {}, http.max_event_streams)\n",
                streams.slots.max
            ));
    };
    let session = match caller.principal {
        Principal::Person(_) => req
            .cookie(guard::SESSION_COOKIE)
            .map(|c| (c.value().to_owned(), auth.clone())),
        Principal::Token { .. } => None,
    };
    let (pending, cursor) = backfill(&live, &bed);
    let state = StreamState {
        live: live.get_ref().clone(),
        bed,
        cursor,
        pending,
        framer: Framer::default(),
        dropped: 0,
        first: true,
        session,
        streams: streams.get_ref().clone(),
        _slot: slot,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let frame = st.next_frame().await?;
        Some((Ok::<_, actix_web::Error>(bytes::Bytes::from(frame)), st))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

#[derive(serde::Deserialize)]
pub(super) struct SnippetParams {
    /// The alarm's start (its event time), µs since the Unix epoch.
    start_us: Option<i64>,
}

/// `GET /api/beds/{bed}/alarms/{alarm_id}/snippet?start_us=`: the alarm's snippet as built
/// (`state: "built"`), else the window cut from what the ring still holds (`"collecting"`
/// while the window's end is not yet past, `"partial"` after), else `"none"`; `message` says
/// which in words. Segments as in a frame.
pub(super) async fn snippet(
    live: web::Data<Arc<LiveState>>,
    auth: web::Data<AuthState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    params: web::Query<SnippetParams>,
) -> HttpResponse {
    let (bed, alarm_id) = path.into_inner();
    if let Err(r) = admit(
        &live,
        &auth,
        &caller,
        &[
            ("bed", &bed, MAX_NAME_CHARS),
            ("alarm_id", &alarm_id, MAX_ALARM_ID_CHARS),
        ],
        &bed,
        "/api/beds/{bed}/alarms/{alarm_id}/snippet",
        &format!("curves of alarm {alarm_id} on bed {bed}"),
    )
    .await
    {
        return r;
    }
    HttpResponse::Ok().json(snippet_json(
        &live,
        &bed,
        &alarm_id,
        params.start_us,
        now_us(),
    ))
}

/// The answer of [`snippet`] (pure but for the ring).
pub fn snippet_json(
    live: &LiveState,
    bed: &str,
    alarm_id: &str,
    start: Option<i64>,
    now: i64,
) -> serde_json::Value {
    let mut framer = Framer::default();
    // The built snippet of this start; else the newest of the alarm id whose start is within
    // a second of the one asked (the page passes the history's time of the start).
    let built = live.waves.snippet(alarm_id, start).or_else(|| {
        let t = start?;
        live.waves
            .snippet(alarm_id, None)
            .filter(|s| (s.alarm_start_us - t).abs() <= 1_000_000)
    });
    if let Some(s) = built.filter(|s| s.bed == bed) {
        let (channels, segs) = framer.encode(s.segments.iter());
        return serde_json::json!({
            "alarm_id": alarm_id,
            "state": "built",
            "message": format!("the ±{} s around the alarm's start", (s.window_end_us - s.window_start_us) / 2_000_000),
            "alarm_start_us": s.alarm_start_us,
            "window_start_us": s.window_start_us,
            "window_end_us": s.window_end_us,
            "channels": channels,
            "segs": segs,
        });
    }
    let Some(start) = start else {
        return serde_json::json!({
            "alarm_id": alarm_id,
            "state": "none",
            "message": "no snippet of this alarm is kept here, and its start time was not given",
            "channels": [],
            "segs": [],
        });
    };
    let (from, to) = (start - SNIPPET_HALF_US, start + SNIPPET_HALF_US);
    let cut = live.waves.between(bed, from, to);
    let (state, message) = if cut.is_empty() {
        (
            "none",
            "no curves of this bed around the alarm's start are kept in memory (the stored snippet goes to the backbone)".to_owned(),
        )
    } else if now < to {
        (
            "collecting",
            format!(
                "snippet not built yet: it is complete {} s after the alarm's start; showing what has arrived",
                SNIPPET_HALF_US / 1_000_000
            ),
        )
    } else {
        (
            "partial",
            "no snippet was built for this alarm: showing the curves still in memory".to_owned(),
        )
    };
    let (channels, segs) = framer.encode(cut.iter().map(|s| &**s));
    serde_json::json!({
        "alarm_id": alarm_id,
        "state": state,
        "message": message,
        "alarm_start_us": start,
        "window_start_us": from,
        "window_end_us": to,
        "channels": channels,
        "segs": segs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(cursor: u64, n: u32) -> Kept {
        Kept {
            cursor,
            segment: Arc::new(WaveformSegment {
                sample_count: n,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_page_that_fell_behind_gets_the_newest_segments_and_the_rest_is_counted() {
        let pending: Vec<Kept> = (1..=10).map(|c| kept(c, 400)).collect();
        let (send, dropped) = bound(pending.clone(), 1_000);
        assert_eq!(dropped, 8);
        assert_eq!(send.iter().map(|k| k.cursor).collect::<Vec<_>>(), [9, 10]);
        let (send, dropped) = bound(pending, 100_000);
        assert_eq!((send.len(), dropped), (10, 0));
        // One segment larger than the bound is still sent (never starve a channel).
        let (send, dropped) = bound(vec![kept(1, 50_000)], 1_000);
        assert_eq!((send.len(), dropped), (1, 0));
    }

    fn unpack(f: &str, d: &str) -> Vec<i32> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
        match f {
            "i16" => bytes
                .chunks(2)
                .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            _ => bytes
                .chunks(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    #[test]
    fn samples_travel_bit_exact_as_i16_when_they_fit_else_i32() {
        let small = vec![0, -1, 32_767, -32_768, 5];
        let (f, d) = pack_samples(&small);
        assert_eq!(f, "i16");
        assert_eq!(unpack(f, &d), small);
        let big = vec![0, 32_768, -40_000, i32::MAX, i32::MIN];
        let (f, d) = pack_samples(&big);
        assert_eq!(f, "i32");
        assert_eq!(unpack(f, &d), big);
    }

    #[test]
    fn a_channel_is_described_once_and_its_gaps_and_scale_travel_with_each_segment() {
        let seg = WaveformSegment {
            device_id: "mon-01".into(),
            bed: "bed-01".into(),
            mdc_code: 131_330,
            mdc_refid: "MDC_ECG_ELEC_POTL_II".into(),
            unit_ucum: "mV".into(),
            sample_rate_hz: 500.0,
            sample_period_us: 2000.0,
            decimal_exponent: -1,
            scale: 0.05,
            range_low: Some(-2000.0),
            range_high: Some(2000.0),
            first_sample_time_us: Some(1_000_000),
            sample_count: 5,
            samples: vec![1, 2, 3],
            gaps: vec![icu_protos::v1::SampleRun { start: 1, count: 2 }],
            ..Default::default()
        };
        let mut framer = Framer::default();
        let (channels, segs) = framer.encode([&seg, &seg]);
        assert_eq!(channels.len(), 1);
        assert_eq!(channels[0]["code"], 131_330);
        assert!((channels[0]["high"].as_f64().unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1]["c"], 0);
        assert_eq!(segs[0]["t0"], 1_000_000);
        assert_eq!(segs[0]["n"], 5);
        assert_eq!(segs[0]["gaps"], serde_json::json!([[1, 2]]));
        assert!((segs[0]["k"].as_f64().unwrap() - 0.005).abs() < 1e-12);
        let (channels, _) = framer.encode([&seg]);
        assert!(
            channels.is_empty(),
            "known channels are not described again"
        );
    }
}
