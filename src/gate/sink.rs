//! [`GatedSink`]: the gate between a capture thread and a conversation (`mic --gate`).
//!
//! A capture thread must never wait (a thread that waits misses its periods and the device
//! overruns), so this sink only ever uses the non-blocking appends. The gate, though, cannot
//! take a chunk back once it has looked at it: its detector, pre-roll and hangover have moved
//! on. So what the gate decides is kept here, in order, until the conversation takes it, and a
//! new chunk is refused ([`TryAppendError::Full`], which leaves it in the capture's own bounded
//! queue, where an overflow is reported) until everything decided before it is out. Nothing is
//! dropped here, and the memory is bounded by one chunk's decisions (at most the pre-roll plus
//! the chunk).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::capture::AudioSink;
use crate::client::AudioSender;
use crate::error::{Error, Result, TryAppendError};
use crate::gate::{Accounting, Counters, Gate, GateConfig, Output};
use crate::protocol::EventKind;
use crate::sys::lock;

/// Client events (capture overruns, say) that may wait behind the gate's audio. They are
/// rare; past this many the capture is asked to offer them again later.
const MAX_WAITING_EVENTS: usize = 64;

/// One decision of the gate, owned, waiting for the conversation to take it.
#[derive(Debug)]
enum Step {
    /// `client.gate_opened` / `client.gate_closed`, or a capture event, in order.
    Notify(EventKind),
    /// The next this many samples of `Pending::audio`.
    Audio(usize),
    /// `input_audio_buffer.commit` (manual mode).
    Commit,
    /// The gate has been closed for the idle timeout: the conversation ends its session and
    /// opens a new one at the next onset.
    Idle,
}

/// What the gate decided and the conversation has not taken yet.
#[derive(Debug)]
struct Pending {
    sample_rate: u32,
    steps: VecDeque<Step>,
    /// The samples of every `Step::Audio`, in order.
    audio: VecDeque<i16>,
    events: usize,
}

/// The gate and its waiting decisions, shared by the capture thread (through the sink) and
/// the owner (through [`GateControl`]).
#[derive(Debug)]
struct Inner {
    gate: Gate,
    pending: Pending,
    sender: AudioSender,
    idles: u64,
    /// The gate's idle timeout, reported with the session's idle end.
    idle_ms: u64,
    finished: bool,
}

/// An [`AudioSink`] for [`Capture::start`](crate::Capture::start) that puts the speech gate
/// in front of a conversation. Made with [`GatedSink::new`], together with the
/// [`GateControl`] that finishes the gate once the capture has stopped.
///
/// ```no_run
/// use qwen_asr_realtime::gate::{GateConfig, GatedSink};
/// use qwen_asr_realtime::{Capture, CaptureConfig, ConnectParams, Conversation, SessionConfig};
///
/// let session = SessionConfig::default();
/// let conv = Conversation::start(ConnectParams::new(), &session)?;
/// let (sink, control) = GatedSink::new(conv.audio_sender(), GateConfig::for_session(&session))?;
/// let mut mic = Capture::start(CaptureConfig::default().sample_rate(control.sample_rate()), sink)?;
/// // ... later:
/// mic.stop()?;
/// control.finish()?; // the last utterance goes out whole
/// conv.end_session(std::time::Duration::from_secs(10))?;
/// # Ok::<(), qwen_asr_realtime::Error>(())
/// ```
#[derive(Debug)]
pub struct GatedSink {
    inner: Arc<Mutex<Inner>>,
}

/// The owner's side of a [`GatedSink`]: the gate's accounting while it runs, and
/// [`finish`](GateControl::finish) once the capture has stopped.
#[derive(Debug)]
pub struct GateControl {
    inner: Arc<Mutex<Inner>>,
    sample_rate: u32,
}

impl GatedSink {
    /// A gate with `config` at the conversation's sample rate in front of `sender`. Build the
    /// config with [`GateConfig::for_session`] so that its hangover covers the server's
    /// silence window (VAD mode) or its closes commit (manual mode).
    pub fn new(sender: AudioSender, config: GateConfig) -> Result<(GatedSink, GateControl)> {
        let sample_rate = sender.sample_rate();
        let idle_ms = config.idle_timeout_ms.map_or(0, u64::from);
        let gate = Gate::new(config, sample_rate)?;
        let inner = Arc::new(Mutex::new(Inner {
            gate,
            pending: Pending {
                sample_rate,
                // Room for the pre-roll's burst at an onset and a chunk or two behind it, so
                // the capture thread does not allocate in the usual case.
                steps: VecDeque::with_capacity(16),
                audio: VecDeque::with_capacity(sample_rate as usize),
                events: 0,
            },
            sender,
            idles: 0,
            idle_ms,
            finished: false,
        }));
        let control = GateControl {
            inner: Arc::clone(&inner),
            sample_rate,
        };
        Ok((GatedSink { inner }, control))
    }
}

impl AudioSink for GatedSink {
    fn try_append(&self, samples: &[i16]) -> std::result::Result<(), TryAppendError> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if inner.finished {
            return Err(TryAppendError::Other(Error::closed()));
        }
        // What the gate decided before this chunk goes first; until it has, the chunk waits
        // in the capture's queue.
        inner.drain(Mode::Try)?;
        if !inner.pending.is_empty() {
            return Err(TryAppendError::Full);
        }
        let pending = &mut inner.pending;
        inner.gate.process(samples, |out| pending.push(out));
        // The chunk is taken: what cannot go now goes before the next one.
        match inner.drain(Mode::Try) {
            Err(TryAppendError::Full) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn try_notify(&self, kind: &EventKind) -> std::result::Result<(), TryAppendError> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if inner.pending.is_empty() {
            return inner.sender.try_notify(kind.clone());
        }
        // Behind the gate's audio, so that it stays in order with the chunks before it.
        if inner.pending.events >= MAX_WAITING_EVENTS {
            return Err(TryAppendError::Full);
        }
        inner.pending.events += 1;
        inner.pending.steps.push_back(Step::Notify(kind.clone()));
        Ok(())
    }
}

impl Inner {
    /// Sends what the gate decided, in order, as far as `mode` allows.
    fn drain(&mut self, mode: Mode) -> std::result::Result<(), TryAppendError> {
        self.pending
            .drain(&self.sender, mode, &mut self.idles, self.idle_ms)
    }
}

impl GateControl {
    /// The session's sample rate the gate runs at: give it to the capture's config.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The gate's accounting: captured = forwarded + gated + held. Audio the gate has
    /// forwarded but the conversation has not taken yet counts as forwarded.
    pub fn counters(&self) -> Counters {
        lock(&self.inner).gate.counters()
    }

    /// Stretches of silence long enough to end a session (`GateConfig::idle_timeout_ms`):
    /// each one ended the session then.
    pub fn idles(&self) -> u64 {
        lock(&self.inner).idles
    }

    /// The gate's and the conversation's accounting together (see [`Accounting`]).
    pub fn accounting(&self) -> Accounting {
        let inner = lock(&self.inner);
        Accounting {
            gate: inner.gate.counters(),
            conversation: inner.sender.stats(),
        }
    }

    /// True while the gate forwards audio.
    pub fn is_open(&self) -> bool {
        lock(&self.inner).gate.is_open()
    }

    /// Ends the gate, after the capture has stopped: what it decided is sent (waiting for
    /// room if need be), an open gate closes (with a commit in manual mode) so the last
    /// utterance goes out whole, and the sink takes no more audio. Call it before
    /// `end_session`. Stop the capture first: a capture thread still running would wait for
    /// this call to end (it holds the gate), then have its chunks refused as closed.
    pub fn finish(&self) -> Result<()> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if inner.finished {
            return Ok(());
        }
        inner.finished = true;
        let pending = &mut inner.pending;
        inner.gate.finish(|out| pending.push(out));
        inner.drain(Mode::Wait).map_err(|e| match e {
            TryAppendError::Other(e) => e,
            // Blocking sends never answer Full.
            TryAppendError::Full => Error::closed(),
        })
    }
}

/// How the waiting steps are sent: without waiting (the capture thread), or waiting for room.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Try,
    Wait,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Keeps one of the gate's outputs until it can be sent.
    fn push(&mut self, out: Output<'_>) {
        let rate = self.sample_rate;
        let step = match out {
            Output::Opened {
                at_ms,
                speech_at_sample,
                ..
            } => Step::Notify(EventKind::GateOpened {
                at_ms,
                speech_at_ms: samples_ms(speech_at_sample, rate),
            }),
            Output::Audio { samples, .. } => {
                self.audio.extend(samples.iter().copied());
                // Contiguous audio decided in one chunk goes out as one append.
                if let Some(Step::Audio(n)) = self.steps.back_mut() {
                    *n += samples.len();
                    return;
                }
                Step::Audio(samples.len())
            }
            Output::Closed {
                at_ms,
                speech_end_sample,
                commit,
                ..
            } => {
                if commit {
                    self.steps.push_back(Step::Commit);
                }
                Step::Notify(EventKind::GateClosed {
                    at_ms,
                    speech_end_ms: samples_ms(speech_end_sample, rate),
                })
            }
            Output::Commit { .. } => Step::Commit,
            Output::Idle { .. } => Step::Idle,
        };
        self.steps.push_back(step);
    }

    /// Sends the waiting steps in order until one is refused (`Full`, in `Mode::Try`) or all
    /// are out.
    fn drain(
        &mut self,
        sender: &AudioSender,
        mode: Mode,
        idles: &mut u64,
        idle_ms: u64,
    ) -> std::result::Result<(), TryAppendError> {
        while let Some(step) = self.steps.front_mut() {
            match step {
                Step::Audio(n) => {
                    // The ring may hold the samples in two pieces: each goes as its own
                    // append, and a refusal of the second keeps only the second.
                    let (front, _) = self.audio.as_slices();
                    let k = front.len().min(*n);
                    let taken = match mode {
                        Mode::Try => sender.try_append_pcm(&front[..k]),
                        Mode::Wait => sender
                            .append_pcm(&front[..k])
                            .map_err(TryAppendError::Other),
                    };
                    taken?;
                    self.audio.drain(..k);
                    *n -= k;
                    if *n > 0 {
                        continue;
                    }
                }
                Step::Notify(kind) => {
                    match mode {
                        Mode::Try => sender.try_notify(kind.clone())?,
                        Mode::Wait => sender.notify(kind.clone()).map_err(TryAppendError::Other)?,
                    }
                    if !matches!(
                        kind,
                        EventKind::GateOpened { .. } | EventKind::GateClosed { .. }
                    ) {
                        self.events = self.events.saturating_sub(1);
                    }
                }
                Step::Commit => {
                    let committed = match mode {
                        Mode::Try => sender.try_commit(),
                        Mode::Wait => sender.commit().map_err(TryAppendError::Other),
                    };
                    match committed {
                        // Nothing forwarded since the last commit: nothing to commit.
                        Ok(()) | Err(TryAppendError::Other(Error::EmptyCommit)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Step::Idle => {
                    match mode {
                        Mode::Try => sender.try_idle(idle_ms)?,
                        Mode::Wait => sender.idle(idle_ms).map_err(TryAppendError::Other)?,
                    }
                    *idles += 1;
                }
            }
            self.steps.pop_front();
        }
        Ok(())
    }
}

fn samples_ms(samples: u64, rate: u32) -> u64 {
    samples.saturating_mul(1000) / u64::from(rate.max(1))
}
