//! Where the audio sent lies on the device timeline.
//!
//! The replay counts the audio stream in nanoseconds across connections; the service counts
//! ms of its own session's audio. Neither is the device's clock: a speech gate sends
//! stretches with gaps between them, and after an idle close the service's offsets restart.
//! This records, per stretch of the stream, where it was captured (the gate says so with
//! each `client.gate_opened`, in order with the frames), so that an offset the service
//! sends maps back to when the audio was said. Without a gate the device timeline is the
//! stream itself: one stretch from 0.

use std::collections::VecDeque;

/// Stretches remembered: one per gate opening, so hours of a busy device; the oldest are
/// forgotten first (their offsets then map to nothing).
pub(crate) const MAX_DEVICE_STRETCHES: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Stretch {
    /// Where it starts in the stream, in ns.
    stream_start: u64,
    /// Where it starts on the device timeline, in ns.
    device_start: u64,
    len: u64,
}

/// The stream's stretches and their device positions, bounded.
#[derive(Debug)]
pub(crate) struct DeviceTimeline {
    stretches: VecDeque<Stretch>,
    /// Set by a gate opening: where the next audio recorded was captured.
    next_device: Option<u64>,
}

impl DeviceTimeline {
    pub(crate) fn new() -> DeviceTimeline {
        DeviceTimeline {
            stretches: VecDeque::new(),
            next_device: None,
        }
    }

    /// The next audio recorded was captured at `device_ns` (a gate opened there).
    pub(crate) fn jump_to(&mut self, device_ns: u64) {
        self.next_device = Some(device_ns);
    }

    /// `len` ns of audio captured next were never sent (shed from the backlog): the audio
    /// after them was captured that much later.
    pub(crate) fn skip(&mut self, len: u64) {
        let here = self.next_device.or_else(|| {
            self.stretches
                .back()
                .map(|l| l.device_start.saturating_add(l.len))
        });
        self.next_device = Some(here.unwrap_or(0).saturating_add(len));
    }

    /// Records `len` ns of audio at stream position `stream_start`, new on the wire (a
    /// replayed frame keeps the position it was recorded at).
    pub(crate) fn record(&mut self, stream_start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = self.stretches.back().copied();
        let device_start = match (self.next_device.take(), last) {
            (Some(d), _) => d,
            // Without a gate's word, the device time runs on with the stream.
            (None, Some(l)) => l
                .device_start
                .saturating_add(stream_start.saturating_sub(l.stream_start)),
            (None, None) => stream_start,
        };
        if let Some(l) = self.stretches.back_mut() {
            let continues = l.stream_start.saturating_add(l.len) == stream_start
                && l.device_start.saturating_add(l.len) == device_start;
            if continues {
                l.len = l.len.saturating_add(len);
                return;
            }
        }
        if self.stretches.len() >= MAX_DEVICE_STRETCHES {
            self.stretches.pop_front();
        }
        self.stretches.push_back(Stretch {
            stream_start,
            device_start,
            len,
        });
    }

    /// The device position of stream position `stream_ns`: inside or past the end of the
    /// newest stretch starting at or before it; `None` before every stretch remembered.
    pub(crate) fn device_ns(&self, stream_ns: u64) -> Option<u64> {
        let i = self
            .stretches
            .partition_point(|s| s.stream_start <= stream_ns);
        let s = self.stretches.get(i.checked_sub(1)?)?;
        Some(s.device_start.saturating_add(stream_ns - s.stream_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn without_a_gate_the_device_time_is_the_stream() {
        let mut t = DeviceTimeline::new();
        assert_eq!(t.device_ns(0), None);
        t.record(0, 100 * MS);
        t.record(100 * MS, 100 * MS);
        assert_eq!(t.stretches.len(), 1);
        assert_eq!(t.device_ns(150 * MS), Some(150 * MS));
    }

    #[test]
    fn audio_shed_before_it_was_sent_still_takes_its_time_on_the_device() {
        let mut t = DeviceTimeline::new();
        t.record(0, 100 * MS);
        t.skip(50 * MS);
        t.record(100 * MS, 100 * MS);
        assert_eq!(t.device_ns(150 * MS), Some(200 * MS));
    }

    #[test]
    fn gate_openings_move_the_device_position_and_old_stretches_are_forgotten() {
        let mut t = DeviceTimeline::new();
        t.jump_to(1_000 * MS);
        t.record(0, 500 * MS);
        t.jump_to(5_000 * MS);
        t.record(500 * MS, 300 * MS);
        t.record(800 * MS, 200 * MS);
        assert_eq!(t.device_ns(250 * MS), Some(1_250 * MS));
        assert_eq!(t.device_ns(900 * MS), Some(5_400 * MS));
        // Past the end: after the last stretch.
        assert_eq!(t.device_ns(1_100 * MS), Some(5_600 * MS));
        for i in 0..MAX_DEVICE_STRETCHES as u64 {
            t.jump_to(10_000 * MS + i * 1_000 * MS);
            t.record(1_000 * MS + i * 10 * MS, 10 * MS);
        }
        assert_eq!(t.device_ns(250 * MS), None);
        assert_eq!(t.device_ns(u64::MAX).map(|_| ()), Some(()));
    }
}
