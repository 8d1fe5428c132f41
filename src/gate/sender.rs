//! [`GatedSender`]: the gate in front of a conversation. Audio goes in as it is captured (or
//! read from a file); only speech, with its pre-roll and hangover, is appended, and the gate's
//! openings and closings take their place in the conversation's event stream as
//! `client.gate_opened` / `client.gate_closed`, with their device-timeline positions.
//!
//! Sessions while nobody speaks: when the gate has been closed for
//! [`GateConfig::idle_timeout_ms`] of audio ([`Output::Idle`]), the conversation ends its
//! session cleanly (`session.finish`, `session.finished`, close 1000: every result is in, no
//! audio is lost) and keeps no connection at all (no socket, no pings, no timer) until the next
//! onset, whose audio opens a new session configured as the last one
//! (`client.session_idle_closed`, then `client.session_reopened`, in the same event stream).
//! The pre-roll and the audio captured while the new session is being opened wait in the
//! conversation's outgoing queue, and go out as fast as the socket takes them: this sender's
//! blocking appends wait while that queue is full; a capture appending without waiting would
//! see it full and report the overrun. If no new session can be opened (retried as the
//! reconnect policy says), the conversation ends and the audio queued for it is reported in
//! `client.audio_dropped`. With [`GateConfig::keep_session_open`] the session stays open
//! (keepalive pings); a server that closes it while the gate is closed and every result is in
//! causes no error and no loss: the next onset opens a new session the same way.

use crate::client::AudioSender;
use crate::error::{Error, Result};
use crate::gate::{Counters, Gate, GateConfig, Output};
use crate::protocol::EventKind;
use crate::Stats;

/// A [`Gate`] feeding an [`AudioSender`]. Blocking: an append waits while the link is backed
/// up, as [`AudioSender::append_pcm`] does.
pub struct GatedSender {
    sender: AudioSender,
    gate: Gate,
    idles: u64,
    /// The gate's idle timeout, reported with the session's idle end.
    idle_ms: u64,
}

/// Where every millisecond given to a [`GatedSender`] went, as of the moment it is read:
///
/// `captured = sent + gated + held + dropped`
///
/// (each in ms, to within a few ms of rounding: each term is rounded down on its own).
/// `sent` is the audio forwarded by the gate that was not reported lost: transcribed, or on
/// its way (queued, in flight, awaiting its result); `dropped` is what the conversation
/// reported in `client.audio_dropped` events. `held` is the pre-roll waiting for an onset
/// (0 after [`GatedSender::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Accounting {
    /// The gate's own counters (captured, forwarded, gated, held, in samples).
    pub gate: Counters,
    /// The conversation's (appended, dropped, sessions, ...).
    pub conversation: Stats,
}

impl Accounting {
    /// Audio given to the gate, in ms.
    pub fn captured_ms(&self) -> u64 {
        self.gate.captured_ms()
    }

    /// Audio forwarded and not reported lost, in ms.
    pub fn sent_ms(&self) -> u64 {
        self.gate
            .forwarded_ms()
            .saturating_sub(self.conversation.dropped_ms)
    }

    /// Audio the gate held back for good, in ms.
    pub fn gated_ms(&self) -> u64 {
        self.gate.gated_ms()
    }

    /// Audio in the gate's pre-roll now, in ms.
    pub fn held_ms(&self) -> u64 {
        self.gate.held_ms()
    }

    /// Audio reported lost (`client.audio_dropped`), in ms.
    pub fn dropped_ms(&self) -> u64 {
        self.conversation.dropped_ms
    }

    /// Sessions opened so far: the first, and one per reconnect and per idle reopening.
    pub fn sessions(&self) -> u32 {
        self.conversation.sessions
    }
}

impl std::fmt::Debug for GatedSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedSender")
            .field("open", &self.gate.is_open())
            .field("counters", &self.gate.counters())
            .finish()
    }
}

impl GatedSender {
    /// A gate with `config` at the conversation's sample rate, in front of `sender`. Build the
    /// config with [`GateConfig::for_session`] so that its hangover covers the server's
    /// silence window (VAD mode) or its closes commit (manual mode).
    pub fn new(sender: AudioSender, config: GateConfig) -> Result<GatedSender> {
        let idle_ms = config.idle_timeout_ms.map_or(0, u64::from);
        let gate = Gate::new(config, sender.sample_rate())?;
        Ok(GatedSender {
            sender,
            gate,
            idles: 0,
            idle_ms,
        })
    }

    /// Feeds captured audio through the gate: speech is appended, the rest held back.
    pub fn append_pcm(&mut self, pcm: &[i16]) -> Result<()> {
        let (sender, idles, idle_ms) = (&self.sender, &mut self.idles, self.idle_ms);
        let mut result = Ok(());
        self.gate
            .process(pcm, |out| forward(sender, idles, idle_ms, out, &mut result));
        result
    }

    /// Ends the stream: an open gate closes (with a commit in manual mode), so the last
    /// utterance is sent whole. Call it before `end_session`.
    pub fn finish(&mut self) -> Result<()> {
        let (sender, idles, idle_ms) = (&self.sender, &mut self.idles, self.idle_ms);
        let mut result = Ok(());
        self.gate
            .finish(|out| forward(sender, idles, idle_ms, out, &mut result));
        result
    }

    /// The gate's accounting: captured = forwarded + gated + held.
    pub fn counters(&self) -> Counters {
        self.gate.counters()
    }

    /// The gate's and the conversation's accounting together (see [`Accounting`]).
    pub fn accounting(&self) -> Accounting {
        Accounting {
            gate: self.gate.counters(),
            conversation: self.sender.stats(),
        }
    }

    /// Stretches of silence long enough to end a session (`GateConfig::idle_timeout_ms`):
    /// each one ended the session then.
    pub fn idles(&self) -> u64 {
        self.idles
    }
}

/// Acts on one output of the gate; the first error is kept, and what follows it is not sent.
fn forward(
    sender: &AudioSender,
    idles: &mut u64,
    idle_ms: u64,
    out: Output<'_>,
    result: &mut Result<()>,
) {
    if result.is_err() {
        return;
    }
    *result = match out {
        Output::Opened {
            at_ms,
            speech_at_sample,
            ..
        } => sender.notify(EventKind::GateOpened {
            at_ms,
            speech_at_ms: samples_ms(speech_at_sample, sender.sample_rate()),
        }),
        Output::Audio { samples, .. } => sender.append_pcm(samples),
        Output::Closed {
            at_ms,
            speech_end_sample,
            commit,
            ..
        } => {
            let committed = if commit {
                commit_nonempty(sender)
            } else {
                Ok(())
            };
            committed.and_then(|()| {
                sender.notify(EventKind::GateClosed {
                    at_ms,
                    speech_end_ms: samples_ms(speech_end_sample, sender.sample_rate()),
                })
            })
        }
        Output::Commit { .. } => commit_nonempty(sender),
        Output::Idle { .. } => {
            *idles += 1;
            sender.idle(idle_ms)
        }
    };
}

/// A commit, where an empty buffer (nothing forwarded since the last one) is no error.
fn commit_nonempty(sender: &AudioSender) -> Result<()> {
    match sender.commit() {
        Err(Error::EmptyCommit) => Ok(()),
        r => r,
    }
}

fn samples_ms(samples: u64, rate: u32) -> u64 {
    samples.saturating_mul(1000) / u64::from(rate.max(1))
}
