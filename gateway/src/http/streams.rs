//! The bound on long-lived streams (the alarm feed `/api/events`, the live curves): at most
//! `http.max_event_streams` of each kind open at once; a place is freed when its stream ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The open streams of one kind, bounded by `http.max_event_streams`.
#[derive(Debug)]
pub struct EventStreams {
    open: AtomicUsize,
    /// Most open at once.
    pub max: usize,
}

/// One open stream; dropping it (the client went away) frees its place.
#[derive(Debug)]
pub struct StreamSlot(Arc<EventStreams>);

impl EventStreams {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for one more stream, if there is one.
    pub fn try_open(self: &Arc<Self>) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_places_are_bounded_and_freed() {
        let streams = EventStreams::new(2);
        let a = streams.try_open().unwrap();
        let _b = streams.try_open().unwrap();
        assert!(streams.try_open().is_none());
        assert_eq!(streams.open(), 2);
        drop(a);
        assert!(
            streams.try_open().is_some(),
            "a closed stream frees its place"
        );
    }
}
