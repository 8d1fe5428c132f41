//! Maps the service's offsets to the device timeline.
//!
//! The service's `audio_start_ms` / `audio_end_ms` count only the audio it received in the
//! current session. With a gate in front, that audio is a series of forwarded stretches with
//! gaps between them, so the same offset means a later device time after every close. A
//! [`SessionTimeline`] records where each forwarded stretch lay on the device timeline and
//! turns a session offset back into the device position it was captured at.

/// Forwarded stretches remembered per session by default: one per utterance, so a few hours
/// of a busy session; older ones are forgotten first (their offsets then map to `None`).
pub const DEFAULT_TIMELINE_SEGMENTS: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    /// Position in the session's audio (samples sent in this session before it).
    session_start: u64,
    /// Position on the device timeline.
    device_start: u64,
    len: u64,
}

/// The forwarded stretches of one session, in a ring allocated once.
///
/// ```
/// use qwen_asr_realtime::gate::SessionTimeline;
///
/// let mut t = SessionTimeline::new(16_000, 8);
/// t.record(16_000, 8_000); // 0.5 s sent, captured 1 s into the device timeline
/// t.record(80_000, 16_000); // 1 s more, captured at 5 s
/// assert_eq!(t.device_ms(250), Some(1_250));
/// assert_eq!(t.device_ms(700), Some(5_200));
/// ```
#[derive(Debug, Clone)]
pub struct SessionTimeline {
    sample_rate: u32,
    segments: Box<[Segment]>,
    /// Index of the oldest remembered segment, and how many there are.
    first: usize,
    count: usize,
    /// Samples sent in this session so far.
    sent: u64,
}

impl SessionTimeline {
    /// A timeline for a session at `sample_rate` Hz remembering up to `capacity` (at least
    /// one) forwarded stretches.
    pub fn new(sample_rate: u32, capacity: usize) -> SessionTimeline {
        SessionTimeline {
            sample_rate: sample_rate.max(1),
            segments: vec![Segment::default(); capacity.max(1)].into_boxed_slice(),
            first: 0,
            count: 0,
            sent: 0,
        }
    }

    /// Starts a new session: its offsets count from zero again.
    pub fn new_session(&mut self) {
        self.first = 0;
        self.count = 0;
        self.sent = 0;
    }

    /// Samples sent in this session so far.
    pub fn sent_samples(&self) -> u64 {
        self.sent
    }

    /// Records `len` samples sent, captured at device position `device_start` (samples); a
    /// stretch continuing the previous one on both timelines extends it.
    pub fn record(&mut self, device_start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let cap = self.segments.len();
        if self.count > 0 {
            let last = &mut self.segments[(self.first + self.count - 1) % cap];
            if last.device_start + last.len == device_start {
                last.len += len;
                self.sent += len;
                return;
            }
        }
        if self.count == cap {
            // Forget the oldest stretch.
            self.first = (self.first + 1) % cap;
            self.count -= 1;
        }
        self.segments[(self.first + self.count) % cap] = Segment {
            session_start: self.sent,
            device_start,
            len,
        };
        self.count += 1;
        self.sent += len;
    }

    /// The device position (samples) of session offset `session_sample`; offsets at or past
    /// the end of what was sent map past the last stretch's end (the service may place an
    /// end there); offsets in forgotten stretches give `None`.
    pub fn device_sample(&self, session_sample: u64) -> Option<u64> {
        let cap = self.segments.len();
        // The newest stretch starting at or before the offset: binary search over the ring.
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.segments[(self.first + mid) % cap].session_start <= session_sample {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let seg = self.segments[(self.first + lo.checked_sub(1)?) % cap];
        Some(
            seg.device_start
                .saturating_add(session_sample - seg.session_start),
        )
    }

    /// [`device_sample`](Self::device_sample) in ms, for an offset in ms as the service
    /// sends it (negative offsets, which a hostile server may send, give `None`).
    pub fn device_ms(&self, session_ms: i64) -> Option<u64> {
        let ms = u64::try_from(session_ms).ok()?;
        let rate = u64::from(self.sample_rate);
        let sample = ms.checked_mul(rate)? / 1000;
        Some(self.device_sample(sample)?.saturating_mul(1000) / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_across_gaps_and_sessions() {
        let mut t = SessionTimeline::new(16_000, 4);
        assert_eq!(t.device_ms(0), None);
        t.record(32_000, 1_600);
        t.record(33_600, 1_600); // contiguous: one stretch
        t.record(160_000, 3_200);
        assert_eq!(t.sent_samples(), 6_400);
        assert_eq!(t.device_sample(0), Some(32_000));
        assert_eq!(t.device_sample(3_199), Some(35_199));
        assert_eq!(t.device_sample(3_200), Some(160_000));
        // Past what was sent: after the last stretch.
        assert_eq!(t.device_sample(7_000), Some(163_800));
        assert_eq!(t.device_ms(250), Some(10_050));
        assert_eq!(t.device_ms(-5), None);
        assert_eq!(t.device_ms(i64::MAX), None);
        t.new_session();
        assert_eq!(t.device_ms(0), None);
        t.record(480_000, 1_600);
        assert_eq!(t.device_ms(50), Some(30_050));
    }

    #[test]
    fn the_oldest_stretches_are_forgotten_first() {
        let mut t = SessionTimeline::new(8_000, 2);
        t.record(0, 100);
        t.record(1_000, 100);
        t.record(2_000, 100);
        assert_eq!(t.device_sample(50), None);
        assert_eq!(t.device_sample(150), Some(1_050));
        assert_eq!(t.device_sample(250), Some(2_050));
    }
}
