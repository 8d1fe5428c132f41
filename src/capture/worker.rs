//! The capture thread: reads periods from the source, converts them to the session's rate,
//! queues fixed-size chunks and hands them to the sink without ever waiting on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::device::{Read, Source};
use super::queue::{ChunkQueue, Pending};
use super::{AudioSink, Shared};
use crate::audio::resample::Resampler;
use crate::error::{Error, TryAppendError};
use crate::protocol::EventKind;

/// The `reason` of the `AudioDropped` sent for audio still queued when the capture ends.
const DROP_REASON_ENDED: &str = "capture ended while the conversation's queue was full";

/// What the thread needs besides the source and the sink.
pub(crate) struct Plan {
    pub(crate) device: String,
    pub(crate) channels: usize,
    pub(crate) period_frames: usize,
    pub(crate) resampler: Resampler,
    pub(crate) chunk_samples: usize,
    pub(crate) chunk_ms: u64,
    pub(crate) queue_slots: usize,
    pub(crate) out_rate: u32,
    /// Stop by itself after this many samples at `out_rate` (`CaptureConfig::limit_ms`).
    pub(crate) limit_samples: Option<u64>,
}

enum Flow {
    Go,
    Closed,
    Failed(Error),
}

enum End {
    Stopped,
    /// The configured amount of audio was captured.
    Limit,
    DeviceFailed(Error),
    SinkClosed,
    SinkFailed(Error),
}

/// Marks the capture as no longer running however the thread ends (also by a panic).
struct RunningGuard<'a>(&'a Shared);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

struct Worker<S: AudioSink> {
    sink: S,
    shared: Arc<Shared>,
    queue: ChunkQueue,
    pending: Pending,
    chunk_ms: u64,
    out_rate: u32,
    overruns: u64,
    /// Loop iterations (about one per period) so far.
    iteration: u64,
    /// While the sink is full, the iteration of the next offer.
    next_offer: u64,
    /// Iterations to wait after the next refusal: doubles up to `max_backoff`, so that a
    /// long stall costs few calls and its losses add up into few `AudioDropped` reports.
    backoff: u64,
    max_backoff: u64,
    /// About one period: the pause between offers in `wait_for_room`.
    period: Duration,
}

/// The body of the capture thread.
pub(crate) fn run<D: Source, S: AudioSink>(
    mut source: D,
    sink: S,
    shared: Arc<Shared>,
    plan: Plan,
) {
    let _running = RunningGuard(&shared);
    let Plan {
        device,
        channels,
        period_frames,
        mut resampler,
        chunk_samples,
        chunk_ms,
        queue_slots,
        out_rate,
        limit_samples,
    } = plan;
    let mut taken = 0u64;
    let mut raw = vec![0i16; period_frames * channels];
    let expected_out =
        period_frames as u64 * u64::from(out_rate) / u64::from(resampler.in_rate().max(1)) + 64;
    let mut converted = Vec::with_capacity(expected_out as usize);
    let mut w = Worker {
        sink,
        shared: shared.clone(),
        queue: ChunkQueue::new(chunk_samples, queue_slots),
        pending: Pending::with_capacity(queue_slots + 4),
        chunk_ms,
        out_rate,
        overruns: 0,
        iteration: 0,
        next_offer: 0,
        backoff: 1,
        max_backoff: max_backoff(&resampler, period_frames),
        period: Duration::from_micros(
            (period_frames as u64 * 1_000_000 / u64::from(resampler.in_rate().max(1))).max(1000),
        ),
    };
    let end = loop {
        if shared.stop.load(Ordering::Acquire) {
            break End::Stopped;
        }
        match source.read(&mut raw) {
            Read::Frames(n) => {
                shared
                    .frames_captured
                    .fetch_add(n as u64, Ordering::Relaxed);
                converted.clear();
                resampler.process(&raw[..n * channels], &mut converted);
                if let Some(limit) = limit_samples {
                    converted.truncate(usize::try_from(limit - taken).unwrap_or(usize::MAX));
                }
                w.enqueue(&converted);
                taken += converted.len() as u64;
                if limit_samples.is_some_and(|limit| taken >= limit) {
                    break End::Limit;
                }
            }
            Read::Idle => {}
            Read::Overrun { gap_ms } => w.overrun(&device, gap_ms),
            Read::Fatal(e) => break End::DeviceFailed(e),
        }
        w.iteration += 1;
        match w.flush(false) {
            Flow::Go => {}
            Flow::Closed => break End::SinkClosed,
            Flow::Failed(e) => break End::SinkFailed(e),
        }
    };
    match end {
        End::Stopped => {
            log::debug!("capture from {device:?} stopped");
            w.finish(None);
        }
        End::Limit => {
            log::debug!("capture from {device:?} reached its limit");
            // Nobody is waiting: deliver all of it, unless stop() comes meanwhile.
            w.wait_for_room();
            w.finish(None);
        }
        End::DeviceFailed(e) => {
            log::error!("capture ended: {e}");
            // Nobody is waiting for this thread (unless stop() comes meanwhile): what was
            // captured before the failure, and the error, are worth waiting for room.
            w.wait_for_room();
            w.finish(Some(EventKind::CaptureError {
                message: e.to_string(),
            }));
            shared.set_error(e);
        }
        End::SinkClosed => log::debug!("capture from {device:?} ended: the conversation closed"),
        End::SinkFailed(e) => {
            log::error!("capture from {device:?} ended: the conversation refused audio: {e}");
            shared.set_error(e);
        }
    }
}

impl<S: AudioSink> Worker<S> {
    fn enqueue(&mut self, samples: &[i16]) {
        let (pending, shared, chunk_ms) = (&mut self.pending, &self.shared, self.chunk_ms);
        self.queue.push(samples, |seq| {
            pending.dropped(seq, chunk_ms);
            shared.dropped_ms.fetch_add(chunk_ms, Ordering::Relaxed);
        });
        self.note_queue_level();
    }

    fn note_queue_level(&self) {
        let ms = self.queue.len() as u64 * self.chunk_ms;
        self.shared.queued_ms.store(ms, Ordering::Relaxed);
        self.shared.peak_queued_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn overrun(&mut self, device: &str, gap_ms: u64) {
        self.overruns += 1;
        self.shared.overruns.store(self.overruns, Ordering::Relaxed);
        log::warn!(
            "capture overrun #{} on {device:?}, about {gap_ms} ms lost; recovered",
            self.overruns
        );
        // The gap is inside the chunk being filled: report it before the next one.
        let before = self.queue.fill_seq() + u64::from(self.queue.partial_len() > 0);
        self.pending.overrun(before, self.overruns, gap_ms);
    }

    /// Hands over queued chunks and the events between them until the sink is full. After
    /// a refusal the sink is left alone for `backoff` iterations unless `now`.
    fn flush(&mut self, now: bool) -> Flow {
        if !now && self.iteration < self.next_offer {
            return Flow::Go;
        }
        loop {
            let next = self
                .queue
                .front()
                .map_or(self.queue.fill_seq(), |(seq, _)| seq);
            while let Some(event) = self.pending.peek_ready(next) {
                match self.sink.try_notify(event) {
                    Ok(()) => self.pending.pop(),
                    Err(TryAppendError::Full) => return self.refused(),
                    Err(TryAppendError::Other(e)) => return closed_or_failed(e),
                }
            }
            let Some((_, chunk)) = self.queue.front() else {
                return Flow::Go;
            };
            match self.sink.try_append(chunk) {
                Ok(()) => {
                    let n = chunk.len() as u64;
                    self.queue.pop_front();
                    self.shared.chunks_sent.fetch_add(1, Ordering::Relaxed);
                    self.shared.samples_sent.fetch_add(n, Ordering::Relaxed);
                    self.note_queue_level();
                    self.backoff = 1;
                }
                Err(TryAppendError::Full) => return self.refused(),
                Err(TryAppendError::Other(e)) => return closed_or_failed(e),
            }
        }
    }

    fn refused(&mut self) -> Flow {
        self.next_offer = self.iteration + self.backoff;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        Flow::Go
    }

    fn stop_requested(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// After a device failure: offers the queued chunks and events once a period until the
    /// sink has taken them, it closes, or the owner asks the capture to stop.
    fn wait_for_room(&mut self) {
        loop {
            let deliverable =
                self.queue.len() > 0 || self.pending.peek_ready(self.queue.fill_seq()).is_some();
            if !deliverable || self.stop_requested() {
                return;
            }
            let before = (self.queue.len(), self.pending.len());
            if !matches!(self.flush(true), Flow::Go) {
                return;
            }
            if (self.queue.len(), self.pending.len()) == before {
                std::thread::sleep(self.period);
            }
        }
    }

    /// At the end: hands over what the sink takes now, the last partial chunk included,
    /// reports the rest as dropped, then `last`. Never waits.
    fn finish(&mut self, last: Option<EventKind>) {
        if !matches!(self.flush(true), Flow::Go) {
            return;
        }
        let mut left = self.queue.len() * self.queue.chunk_samples();
        if self.queue.len() == 0 && self.queue.partial_len() > 0 {
            match self.sink.try_append(self.queue.partial()) {
                Ok(()) => {
                    let n = self.queue.partial_len() as u64;
                    self.shared.chunks_sent.fetch_add(1, Ordering::Relaxed);
                    self.shared.samples_sent.fetch_add(n, Ordering::Relaxed);
                }
                Err(TryAppendError::Full) => left += self.queue.partial_len(),
                Err(TryAppendError::Other(_)) => return,
            }
        } else {
            left += self.queue.partial_len();
        }
        self.queue.clear_partial();
        while self.queue.front().is_some() {
            self.queue.pop_front();
        }
        self.note_queue_level();
        let ms = left as u64 * 1000 / u64::from(self.out_rate.max(1));
        self.shared.dropped_ms.fetch_add(ms, Ordering::Relaxed);
        let dropped = (ms > 0).then(|| EventKind::AudioDropped {
            ms,
            reason: DROP_REASON_ENDED.to_owned(),
        });
        let mut lost_events = 0;
        while let Some(event) = self.pending.peek() {
            match self.sink.try_notify(event) {
                Ok(()) => {}
                Err(TryAppendError::Full) => lost_events += 1,
                Err(TryAppendError::Other(_)) => return,
            }
            self.pending.pop();
        }
        for event in dropped.iter().chain(last.iter()) {
            match self.sink.try_notify(event) {
                Ok(()) => {}
                Err(TryAppendError::Full) => lost_events += 1,
                Err(TryAppendError::Other(_)) => return,
            }
        }
        if lost_events > 0 {
            log::warn!(
                "{lost_events} capture event(s) not delivered: the conversation's queue was full"
            );
        }
    }
}

/// Offers to a full sink are at least every half second (of periods).
fn max_backoff(resampler: &Resampler, period_frames: usize) -> u64 {
    const MAX_BACKOFF_MS: u64 = 500;
    let period_ms = (period_frames as u64 * 1000 / u64::from(resampler.in_rate().max(1))).max(1);
    (MAX_BACKOFF_MS / period_ms).max(1)
}

fn closed_or_failed(e: Error) -> Flow {
    match e {
        Error::Closed { .. } => Flow::Closed,
        e => Flow::Failed(e),
    }
}
