//! The capture thread's local queue: a fixed ring of equal-sized chunks bounded by total
//! audio, the oldest dropped on overflow, and the client events that must reach the
//! conversation in order with those chunks.

use std::collections::VecDeque;

use crate::protocol::EventKind;

/// Why audio the capture had was dropped (the `reason` of `AudioDropped`).
pub(crate) const DROP_REASON_QUEUE_FULL: &str =
    "capture queue full: the conversation is not taking audio as fast as the microphone \
     delivers it (slow or stalled network); the oldest audio was dropped";

/// A ring of `slots + 1` chunk buffers: up to `slots` completed chunks plus the one being
/// filled. Allocated once; pushing never allocates.
#[derive(Debug)]
pub(crate) struct ChunkQueue {
    chunk: usize,
    slots: usize,
    buf: Vec<i16>,
    /// Ring index of the oldest completed chunk.
    head: usize,
    /// Completed chunks (0..=slots).
    len: usize,
    /// Samples in the chunk being filled (at ring index head + len).
    fill: usize,
    /// Sequence number of the oldest completed chunk; the chunk being filled is
    /// `head_seq + len`.
    head_seq: u64,
}

impl ChunkQueue {
    /// A queue of at most `slots` completed chunks of `chunk` samples.
    pub(crate) fn new(chunk: usize, slots: usize) -> ChunkQueue {
        let (chunk, slots) = (chunk.max(1), slots.max(1));
        ChunkQueue {
            chunk,
            slots,
            buf: vec![0; chunk * (slots + 1)],
            head: 0,
            len: 0,
            fill: 0,
            head_seq: 0,
        }
    }

    /// Samples per chunk.
    pub(crate) fn chunk_samples(&self) -> usize {
        self.chunk
    }

    /// Completed chunks waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Samples in the chunk being filled.
    pub(crate) fn partial_len(&self) -> usize {
        self.fill
    }

    /// The sequence number of the chunk being filled.
    pub(crate) fn fill_seq(&self) -> u64 {
        self.head_seq + self.len as u64
    }

    fn slot(&mut self, ring_index: usize) -> &mut [i16] {
        let i = ring_index % (self.slots + 1);
        &mut self.buf[i * self.chunk..(i + 1) * self.chunk]
    }

    /// Appends samples, completing chunks as they fill. When a chunk completes and `slots`
    /// are already taken, the oldest is dropped; `on_drop` is called with its sequence number.
    pub(crate) fn push(&mut self, mut samples: &[i16], mut on_drop: impl FnMut(u64)) {
        while !samples.is_empty() {
            let (fill, chunk) = (self.fill, self.chunk);
            let take = (chunk - fill).min(samples.len());
            let tail = self.head + self.len;
            self.slot(tail)[fill..fill + take].copy_from_slice(&samples[..take]);
            samples = &samples[take..];
            self.fill += take;
            if self.fill == chunk {
                self.fill = 0;
                if self.len == self.slots {
                    on_drop(self.head_seq);
                    self.pop_front();
                }
                self.len += 1;
            }
        }
    }

    /// The oldest completed chunk and its sequence number.
    pub(crate) fn front(&self) -> Option<(u64, &[i16])> {
        if self.len == 0 {
            return None;
        }
        let i = self.head % (self.slots + 1);
        Some((
            self.head_seq,
            &self.buf[i * self.chunk..(i + 1) * self.chunk],
        ))
    }

    /// Removes the oldest completed chunk.
    pub(crate) fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % (self.slots + 1);
            self.len -= 1;
            self.head_seq += 1;
        }
    }

    /// The samples of the chunk being filled (fewer than a chunk).
    pub(crate) fn partial(&self) -> &[i16] {
        let i = (self.head + self.len) % (self.slots + 1);
        &self.buf[i * self.chunk..i * self.chunk + self.fill]
    }

    /// Forgets the chunk being filled.
    pub(crate) fn clear_partial(&mut self) {
        self.fill = 0;
    }
}

/// Client events waiting for the chunks before them to be handed over (or dropped), so that
/// they reach the conversation at their place in the audio.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// (sequence number of the first chunk after the event, event), sorted by the first.
    events: VecDeque<(u64, EventKind)>,
}

impl Pending {
    pub(crate) fn with_capacity(n: usize) -> Pending {
        Pending {
            events: VecDeque::with_capacity(n),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Records that chunk `seq` (of `ms` milliseconds) was dropped: extends the drop report
    /// that ends just before it, if that is the latest event there, or starts a new one.
    pub(crate) fn dropped(&mut self, seq: u64, ms: u64) {
        let last_at_or_before = self.events.iter().rposition(|(b, _)| *b <= seq);
        if let Some(i) = last_at_or_before {
            if let (b, EventKind::AudioDropped { ms: total, .. }) = &mut self.events[i] {
                if *b == seq {
                    *total += ms;
                    *b = seq + 1;
                    return;
                }
            }
        }
        self.insert(
            seq + 1,
            EventKind::AudioDropped {
                ms,
                reason: DROP_REASON_QUEUE_FULL.to_owned(),
            },
        );
    }

    /// Records an overrun just before chunk `before`; merged with an overrun already waiting
    /// at the same place (the count is the total so far, the gaps add up).
    pub(crate) fn overrun(&mut self, before: u64, count: u64, gap_ms: u64) {
        if let Some((
            b,
            EventKind::CaptureOverrun {
                count: c,
                gap_ms: g,
            },
        )) = self.events.back_mut()
        {
            if *b == before {
                *c = count;
                *g += gap_ms;
                return;
            }
        }
        self.insert(before, EventKind::CaptureOverrun { count, gap_ms });
    }

    fn insert(&mut self, before: u64, kind: EventKind) {
        let at = self.events.partition_point(|(b, _)| *b <= before);
        self.events.insert(at, (before, kind));
    }

    /// The next event if its place is at or before chunk `next_seq`.
    pub(crate) fn peek_ready(&self, next_seq: u64) -> Option<&EventKind> {
        match self.events.front() {
            Some((b, k)) if *b <= next_seq => Some(k),
            _ => None,
        }
    }

    /// The next event, ready or not (at the end of a capture).
    pub(crate) fn peek(&self) -> Option<&EventKind> {
        self.events.front().map(|(_, k)| k)
    }

    /// Removes the next event (once delivered).
    pub(crate) fn pop(&mut self) {
        self.events.pop_front();
    }

    #[cfg(test)]
    fn pop_ready(&mut self, next_seq: u64) -> Option<EventKind> {
        self.peek_ready(next_seq)?;
        self.events.pop_front().map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(from: i16, n: usize) -> Vec<i16> {
        (0..n).map(|i| from + i as i16).collect()
    }

    #[test]
    fn chunks_come_out_in_order_across_uneven_pushes() {
        let mut q = ChunkQueue::new(4, 3);
        let input = ramp(0, 10);
        q.push(&input[..3], |_| panic!("no drop"));
        q.push(&input[3..10], |_| panic!("no drop"));
        assert_eq!(q.len(), 2);
        assert_eq!(q.partial(), &[8, 9]);
        assert_eq!(q.front(), Some((0, &[0, 1, 2, 3][..])));
        q.pop_front();
        assert_eq!(q.front(), Some((1, &[4, 5, 6, 7][..])));
        q.pop_front();
        assert_eq!(q.front(), None);
        assert_eq!(q.fill_seq(), 2);
    }

    #[test]
    fn overflow_drops_the_oldest_and_stays_bounded() {
        let mut q = ChunkQueue::new(2, 3);
        let mut dropped = Vec::new();
        for i in 0..10 {
            q.push(&[2 * i, 2 * i + 1], |s| dropped.push(s));
            assert!(q.len() <= 3);
        }
        assert_eq!(dropped, [0, 1, 2, 3, 4, 5, 6]);
        let mut got = Vec::new();
        while let Some((seq, c)) = q.front() {
            got.push((seq, c.to_vec()));
            q.pop_front();
        }
        assert_eq!(
            got,
            [(7, vec![14, 15]), (8, vec![16, 17]), (9, vec![18, 19])]
        );
    }

    #[test]
    fn contiguous_drops_make_one_report_placed_at_the_gap() {
        let mut p = Pending::default();
        p.dropped(3, 100);
        p.dropped(4, 100);
        p.dropped(5, 100);
        assert_eq!(p.pop_ready(5), None);
        match p.pop_ready(6) {
            Some(EventKind::AudioDropped { ms: 300, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn an_overrun_between_drops_keeps_its_place() {
        let mut p = Pending::default();
        p.dropped(3, 100);
        p.overrun(4, 1, 250);
        p.dropped(4, 100);
        let got: Vec<_> = std::iter::from_fn(|| p.pop_ready(10)).collect();
        assert_eq!(
            got,
            [
                EventKind::AudioDropped {
                    ms: 100,
                    reason: DROP_REASON_QUEUE_FULL.into()
                },
                EventKind::CaptureOverrun {
                    count: 1,
                    gap_ms: 250
                },
                EventKind::AudioDropped {
                    ms: 100,
                    reason: DROP_REASON_QUEUE_FULL.into()
                },
            ]
        );
    }

    #[test]
    fn overruns_at_one_place_merge() {
        let mut p = Pending::default();
        p.overrun(2, 1, 200);
        p.overrun(2, 2, 210);
        assert_eq!(
            p.pop_ready(2),
            Some(EventKind::CaptureOverrun {
                count: 2,
                gap_ms: 410
            })
        );
        assert_eq!(p.pop_ready(100), None);
    }
}
