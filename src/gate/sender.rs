//! [`GatedSender`]: the gate in front of a conversation. Audio goes in as it is captured (or
//! read from a file); only speech, with its pre-roll and hangover, is appended, and the gate's
//! openings and closings take their place in the conversation's event stream as
//! `client.gate_opened` / `client.gate_closed`, with their device-timeline positions.
//!
//! Not yet here (see the crate's issue on the gate): ending the session while nobody speaks
//! and opening a new one at the next onset. `Output::Idle` is counted, and the session stays
//! open meanwhile (keepalive pings keep it alive).

use crate::client::AudioSender;
use crate::error::{Error, Result};
use crate::gate::{Counters, Gate, GateConfig, Output};
use crate::protocol::EventKind;

/// A [`Gate`] feeding an [`AudioSender`]. Blocking: an append waits while the link is backed
/// up, as [`AudioSender::append_pcm`] does.
pub struct GatedSender {
    sender: AudioSender,
    gate: Gate,
    idles: u64,
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
        let gate = Gate::new(config, sender.sample_rate())?;
        Ok(GatedSender {
            sender,
            gate,
            idles: 0,
        })
    }

    /// Feeds captured audio through the gate: speech is appended, the rest held back.
    pub fn append_pcm(&mut self, pcm: &[i16]) -> Result<()> {
        let (sender, idles) = (&self.sender, &mut self.idles);
        let mut result = Ok(());
        self.gate
            .process(pcm, |out| forward(sender, idles, out, &mut result));
        result
    }

    /// Ends the stream: an open gate closes (with a commit in manual mode), so the last
    /// utterance is sent whole. Call it before `end_session`.
    pub fn finish(&mut self) -> Result<()> {
        let (sender, idles) = (&self.sender, &mut self.idles);
        let mut result = Ok(());
        self.gate
            .finish(|out| forward(sender, idles, out, &mut result));
        result
    }

    /// The gate's accounting: captured = forwarded + gated + held.
    pub fn counters(&self) -> Counters {
        self.gate.counters()
    }

    /// Stretches of silence long enough to end a session (`GateConfig::idle_timeout_ms`).
    pub fn idles(&self) -> u64 {
        self.idles
    }
}

/// Acts on one output of the gate; the first error is kept, and what follows it is not sent.
fn forward(sender: &AudioSender, idles: &mut u64, out: Output<'_>, result: &mut Result<()>) {
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
            Ok(())
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
