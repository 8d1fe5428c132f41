//! Microphone capture through ALSA (feature `alsa`).
//!
//! [`Capture::start`] opens a PCM by name (`default`, `plughw:1,0`, `hw:1,0`, or a name
//! from the user's asoundrc), negotiates interleaved S16_LE (S32_LE if that is all the
//! device has) at the session's rate and mono, and runs a thread named `qwen-capture` that
//! reads one period at a time and hands fixed-size chunks to an [`AudioSink`], usually a
//! conversation's [`AudioSender`](crate::client::AudioSender).
//!
//! - **Devices that cannot do the session's rate or mono** (many USB microphones only offer
//!   44.1 or 48 kHz, some only stereo): the device runs at its own rate and channel count
//!   and the thread downmixes and resamples with a proper low-pass filter
//!   ([`crate::audio::resample`]). ALSA's own `plug` conversion is switched off by default for the
//!   same reason ([`CaptureConfig::alsa_conversion`]). What was negotiated is in
//!   [`Capture::negotiated`].
//! - **Never waiting on the network**: between the device and the sink is a bounded queue
//!   ([`CaptureConfig::queue_ms`]). When the sink is full the chunks wait there; when the
//!   queue is full the oldest audio is dropped and the loss is reported to the sink as
//!   [`EventKind::AudioDropped`], at its place in the audio.
//! - **Overruns** (the thread did not read in time) are recovered, counted, and reported as
//!   [`EventKind::CaptureOverrun`] with the estimated gap.
//! - **A device that disappears** (USB unplugged) ends the capture with
//!   [`EventKind::CaptureError`]; the conversation stays usable.
//! - **A closed sink** (the conversation ended) ends the capture quietly.
//!
//! [`Capture::stop`] and dropping the [`Capture`] end the thread within about a period and
//! join it.
//!
//! ```no_run
//! use qwen_asr_realtime::capture::{AudioSink, Capture, CaptureConfig};
//! use qwen_asr_realtime::{EventKind, TryAppendError};
//!
//! struct Print;
//! impl AudioSink for Print {
//!     fn try_append(&self, samples: &[i16]) -> Result<(), TryAppendError> {
//!         println!("{} samples", samples.len());
//!         Ok(())
//!     }
//!     fn try_notify(&self, kind: &EventKind) -> Result<(), TryAppendError> {
//!         eprintln!("{kind:?}");
//!         Ok(())
//!     }
//! }
//!
//! let mut capture = Capture::start(CaptureConfig::default().device("plughw:1,0"), Print)?;
//! eprintln!("{}", capture.negotiated());
//! std::thread::sleep(std::time::Duration::from_secs(3));
//! capture.stop()?;
//! # Ok::<(), qwen_asr_realtime::Error>(())
//! ```

mod device;
mod queue;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::audio::resample::Resampler;
use crate::error::{Error, Result, TryAppendError};
use crate::protocol::EventKind;

use device::{AlsaSource, Source};

/// The name of the capture thread, as seen in `/proc/<pid>/task/*/comm` and `top -H`.
pub const THREAD_NAME: &str = "qwen-capture";

/// The sample rates the service accepts, in Hz.
pub const SESSION_RATES_HZ: [u32; 2] = [16_000, 8_000];

/// Where captured audio goes: usually a conversation's
/// [`AudioSender`](crate::client::AudioSender).
///
/// Both methods are called from the capture thread and must not wait (on the network or
/// anything else): a capture thread that waits misses its periods and the device overruns.
pub trait AudioSink: Send + 'static {
    /// Takes one chunk of mono samples at the session's rate.
    ///
    /// [`TryAppendError::Full`] means nothing was taken: the chunk stays queued in the
    /// capture and is offered again later. `Other(Error::closed())` ends the capture quietly;
    /// any other error ends it too.
    fn try_append(&self, samples: &[i16]) -> std::result::Result<(), TryAppendError>;

    /// Takes a client event ([`EventKind::AudioDropped`], [`EventKind::CaptureOverrun`],
    /// [`EventKind::CaptureError`]) for the conversation's stream, after the chunks taken
    /// before it. `Full` means it was not taken and is offered again later (before any more
    /// audio); other errors are handled as for [`try_append`](Self::try_append).
    fn try_notify(&self, kind: &EventKind) -> std::result::Result<(), TryAppendError>;
}

/// The sample format the device delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleFormat {
    /// Signed 16-bit little-endian: what is sent to the service.
    S16Le,
    /// Signed 32-bit little-endian (I2S MEMS microphones); the top 16 bits are kept.
    S32Le,
}

impl SampleFormat {
    /// Bytes per sample.
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::S16Le => 2,
            SampleFormat::S32Le => 4,
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SampleFormat::S16Le => "S16_LE",
            SampleFormat::S32Le => "S32_LE",
        })
    }
}

/// How to open and run a capture. Every field has a default; the setters chain.
///
/// ```
/// use qwen_asr_realtime::capture::CaptureConfig;
/// let config = CaptureConfig::default().device("plughw:1,0").chunk_ms(50);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureConfig {
    /// The ALSA PCM name (`arecord -L` lists them). Default `default`.
    pub device: String,
    /// The rate the sink gets, in Hz: the session's, 16000 or 8000. Default 16000.
    /// [`Conversation::stream_from_microphone`](crate::client::Conversation::stream_from_microphone)
    /// sets it from the session.
    pub sample_rate: u32,
    /// Samples handed to the sink per call, in milliseconds of audio: 20 to 500. Default 100
    /// (the official SDKs send 100 ms per append).
    pub chunk_ms: u32,
    /// The ALSA period (how often the thread wakes up), in ms: 5 to 200. Default 20.
    pub period_ms: u32,
    /// The ALSA ring buffer, in ms: at least two periods, at most 2000. Default 200, so that a
    /// busy Raspberry Pi Zero 2 can be late by ten periods before it overruns.
    pub buffer_ms: u32,
    /// The most audio queued for a sink that is not taking it, in ms: at least one chunk, at
    /// most 600000. Default 10000. Beyond it the oldest audio is dropped and reported. The
    /// queue is allocated when the capture starts: 2 bytes per sample, 320 KB for the default
    /// at 16 kHz.
    pub queue_ms: u32,
    /// Let alsa-lib's `plug` layer convert the rate and channel count (when the device name
    /// is a `plug`/`plughw` one). Default `false`: alsa-lib's default rate converter is
    /// linear interpolation without a low-pass filter, which folds what is above the new
    /// Nyquist frequency into the speech band; this crate's converter filters first.
    pub alsa_conversion: bool,
    /// Ask the device for exactly this rate instead of the session's (the audio is then
    /// converted in software). Default `None`: the session's rate if the device has it.
    pub device_rate: Option<u32>,
    /// Ask the device for exactly this many channels (they are then averaged to mono).
    /// Default `None`: mono if the device has it.
    pub device_channels: Option<u32>,
    /// Stop by itself after this much audio, in ms (everything captured is delivered first).
    /// Default `None`: until [`Capture::stop`].
    pub limit_ms: Option<u64>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            device: "default".to_owned(),
            sample_rate: 16_000,
            chunk_ms: 100,
            period_ms: 20,
            buffer_ms: 200,
            queue_ms: 10_000,
            alsa_conversion: false,
            device_rate: None,
            device_channels: None,
            limit_ms: None,
        }
    }
}

impl CaptureConfig {
    /// Sets [`device`](Self::device).
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.device = name.into();
        self
    }

    /// Sets [`sample_rate`](Self::sample_rate).
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.sample_rate = hz;
        self
    }

    /// Sets [`chunk_ms`](Self::chunk_ms).
    pub fn chunk_ms(mut self, ms: u32) -> Self {
        self.chunk_ms = ms;
        self
    }

    /// Sets [`period_ms`](Self::period_ms).
    pub fn period_ms(mut self, ms: u32) -> Self {
        self.period_ms = ms;
        self
    }

    /// Sets [`buffer_ms`](Self::buffer_ms).
    pub fn buffer_ms(mut self, ms: u32) -> Self {
        self.buffer_ms = ms;
        self
    }

    /// Sets [`queue_ms`](Self::queue_ms).
    pub fn queue_ms(mut self, ms: u32) -> Self {
        self.queue_ms = ms;
        self
    }

    /// Sets [`alsa_conversion`](Self::alsa_conversion).
    pub fn alsa_conversion(mut self, on: bool) -> Self {
        self.alsa_conversion = on;
        self
    }

    /// Sets [`device_rate`](Self::device_rate) and [`device_channels`](Self::device_channels):
    /// the device is asked for exactly these, and the audio is converted in software.
    pub fn device_format(mut self, rate: u32, channels: u32) -> Self {
        self.device_rate = Some(rate);
        self.device_channels = Some(channels);
        self
    }

    /// Stops the capture by itself after `ms` of audio.
    pub fn limit_ms(mut self, ms: u64) -> Self {
        self.limit_ms = Some(ms);
        self
    }

    /// Checks every field; the error names the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        fn range(field: &'static str, v: u32, lo: u32, hi: u32, unit: &str) -> Result<()> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::InvalidConfig {
                    field,
                    message: format!("{v} {unit} is outside {lo}..={hi} {unit}"),
                })
            }
        }
        if self.device.is_empty() || self.device.contains('\0') {
            return Err(Error::InvalidConfig {
                field: "capture.device",
                message: format!(
                    "{:?} is not a PCM name (try `default` or one from `arecord -L`)",
                    self.device
                ),
            });
        }
        if !SESSION_RATES_HZ.contains(&self.sample_rate) {
            return Err(Error::InvalidConfig {
                field: "capture.sample_rate",
                message: format!("{} Hz: the service takes 16000 or 8000", self.sample_rate),
            });
        }
        range("capture.chunk_ms", self.chunk_ms, 20, 500, "ms")?;
        range("capture.period_ms", self.period_ms, 5, 200, "ms")?;
        range(
            "capture.buffer_ms",
            self.buffer_ms,
            2 * self.period_ms,
            2000,
            "ms",
        )?;
        range(
            "capture.queue_ms",
            self.queue_ms,
            self.chunk_ms,
            600_000,
            "ms",
        )?;
        if let Some(r) = self.device_rate {
            range("capture.device_rate", r, 4000, 384_000, "Hz")?;
        }
        if let Some(c) = self.device_channels {
            range(
                "capture.device_channels",
                c,
                1,
                crate::audio::resample::MAX_CHANNELS,
                "channels",
            )?;
        }
        Ok(())
    }
}

/// What the device actually agreed to. `Display` gives one line for a log or stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The PCM name.
    pub device: String,
    /// The device's rate, in Hz.
    pub rate: u32,
    /// The device's channel count.
    pub channels: u32,
    /// The device's sample format.
    pub format: SampleFormat,
    /// The ALSA period, in frames.
    pub period_frames: u64,
    /// The ALSA ring buffer, in frames.
    pub buffer_frames: u64,
    /// The rate handed to the sink (the session's), in Hz; always mono S16.
    pub output_rate: u32,
}

impl Negotiated {
    /// The period in milliseconds.
    pub fn period_ms(&self) -> f64 {
        self.period_frames as f64 * 1000.0 / f64::from(self.rate.max(1))
    }

    /// The ring buffer in milliseconds.
    pub fn buffer_ms(&self) -> f64 {
        self.buffer_frames as f64 * 1000.0 / f64::from(self.rate.max(1))
    }

    /// True when the audio is resampled or downmixed in software.
    pub fn converts(&self) -> bool {
        self.rate != self.output_rate || self.channels != 1
    }
}

impl fmt::Display for Negotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} Hz, {} ch, {}, period {} frames ({:.1} ms), buffer {} frames ({:.0} ms)",
            self.device,
            self.rate,
            self.channels,
            self.format,
            self.period_frames,
            self.period_ms(),
            self.buffer_frames,
            self.buffer_ms()
        )?;
        match (self.channels != 1, self.rate != self.output_rate) {
            (false, false) => Ok(()),
            (true, false) => write!(f, "; downmixed to mono in software"),
            (false, true) => write!(f, "; resampled to {} Hz in software", self.output_rate),
            (true, true) => write!(
                f,
                "; downmixed to mono and resampled to {} Hz in software",
                self.output_rate
            ),
        }
    }
}

/// Counters of a capture, read with [`Capture::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureStats {
    /// Frames read from the device (at the device's rate).
    pub frames_captured: u64,
    /// Chunks the sink took.
    pub chunks_sent: u64,
    /// Samples the sink took (at the session's rate).
    pub samples_sent: u64,
    /// Overruns recovered.
    pub overruns: u64,
    /// Milliseconds of captured audio dropped because the sink did not take it.
    pub dropped_ms: u64,
    /// Milliseconds of audio queued now.
    pub queued_ms: u64,
    /// The most audio ever queued, in ms (never above [`CaptureConfig::queue_ms`]).
    pub peak_queued_ms: u64,
}

/// State shared by the owner and the capture thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    stop: AtomicBool,
    running: AtomicBool,
    frames_captured: AtomicU64,
    chunks_sent: AtomicU64,
    samples_sent: AtomicU64,
    overruns: AtomicU64,
    dropped_ms: AtomicU64,
    queued_ms: AtomicU64,
    peak_queued_ms: AtomicU64,
    error: Mutex<Option<Error>>,
}

impl Shared {
    fn set_error(&self, e: Error) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e);
        }
    }
}

/// A running capture: a thread that reads the microphone and feeds a sink. Dropping it
/// stops and joins the thread.
#[must_use = "dropping the capture stops it"]
#[derive(Debug)]
pub struct Capture {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    negotiated: Negotiated,
}

impl Capture {
    /// Opens `config.device`, negotiates the format, and starts the capture thread feeding
    /// `sink`. Errors (bad config, unknown device, unusable format) come back here, naming
    /// the field, or the device and the ALSA call.
    pub fn start<S: AudioSink>(config: CaptureConfig, sink: S) -> Result<Capture> {
        config.validate()?;
        let (source, negotiated) = AlsaSource::open(&config)?;
        log::info!("capture: {negotiated}");
        Capture::spawn(source, negotiated, &config, sink)
    }

    /// Starts the thread on any source (the ALSA one, or a scripted one in tests).
    pub(crate) fn spawn<D: Source, S: AudioSink>(
        source: D,
        negotiated: Negotiated,
        config: &CaptureConfig,
        sink: S,
    ) -> Result<Capture> {
        let resampler = Resampler::new(negotiated.rate, negotiated.channels, config.sample_rate)
            .map_err(|e| Error::Capture {
                device: negotiated.device.clone(),
                call: "snd_pcm_hw_params",
                message: format!("the negotiated format cannot be converted: {e}"),
            })?;
        let chunk_samples = device::frames_for_ms(config.sample_rate, config.chunk_ms) as usize;
        let plan = worker::Plan {
            device: negotiated.device.clone(),
            channels: negotiated.channels as usize,
            period_frames: negotiated.period_frames as usize,
            resampler,
            chunk_samples,
            chunk_ms: u64::from(config.chunk_ms),
            queue_slots: (config.queue_ms / config.chunk_ms).max(1) as usize,
            out_rate: config.sample_rate,
            limit_samples: config
                .limit_ms
                .map(|ms| ms * u64::from(config.sample_rate) / 1000),
        };
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Ordering::Release);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || worker::run(source, sink, thread_shared, plan))
            .map_err(|e| Error::Internal(format!("cannot start the capture thread: {e}")))?;
        Ok(Capture {
            shared,
            thread: Some(thread),
            negotiated,
        })
    }

    /// What the device agreed to.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CaptureStats {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CaptureStats {
            frames_captured: get(&s.frames_captured),
            chunks_sent: get(&s.chunks_sent),
            samples_sent: get(&s.samples_sent),
            overruns: get(&s.overruns),
            dropped_ms: get(&s.dropped_ms),
            queued_ms: get(&s.queued_ms),
            peak_queued_ms: get(&s.peak_queued_ms),
        }
    }

    /// True until the thread has ended (stopped, device error, or the sink closed).
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Stops the capture and joins its thread (within about a period). Audio already
    /// captured is offered to the sink once more; what it does not take is reported as
    /// dropped. Calling it again does nothing.
    ///
    /// Returns the error that ended the capture earlier, if one did (a device that went
    /// away: the same one the sink got as [`EventKind::CaptureError`]).
    pub fn stop(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                return Err(Error::Internal("the capture thread panicked".into()));
            }
        }
        match self.shared.error.lock() {
            Ok(mut e) => e.take().map_or(Ok(()), Err),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests;
