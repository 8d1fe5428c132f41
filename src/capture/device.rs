//! Opening an ALSA capture PCM, negotiating its parameters, and reading periods from it
//! with overrun recovery.

use std::ffi::CString;

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::{CaptureConfig, Negotiated, SampleFormat};
use crate::error::{Error, Result};

/// `SND_PCM_NO_AUTO_RESAMPLE` (alsa/pcm.h): a `plug` device must not convert the rate.
const SND_PCM_NO_AUTO_RESAMPLE: i32 = 0x0001_0000;
/// `SND_PCM_NO_AUTO_CHANNELS` (alsa/pcm.h): a `plug` device must not convert channels.
const SND_PCM_NO_AUTO_CHANNELS: i32 = 0x0002_0000;

/// `SND_PCM_STATE_*` values (alsa/pcm.h), compared raw: the `alsa` crate panics on a state
/// it does not know.
const STATE_SETUP: i32 = 1;
const STATE_PREPARED: i32 = 2;
const STATE_XRUN: i32 = 4;
const STATE_SUSPENDED: i32 = 7;
const STATE_DISCONNECTED: i32 = 8;

/// What one attempt to read a period gave.
#[derive(Debug)]
pub(crate) enum Read {
    /// This many frames were read into the buffer.
    Frames(usize),
    /// Nothing arrived before the timeout; the device is still there.
    Idle,
    /// The device overran and was recovered; about this much audio was lost.
    Overrun {
        /// Estimated gap in milliseconds.
        gap_ms: u64,
    },
    /// The device is gone or broken; capture must end.
    Fatal(Error),
}

/// A source of interleaved 16-bit frames: the ALSA device, or a scripted one in tests.
pub(crate) trait Source: Send + 'static {
    /// Waits (at most about a period, or the source's timeout) for one period and decodes it
    /// into `out` as interleaved `i16`, `channels` per frame.
    fn read(&mut self, out: &mut [i16]) -> Read;
}

/// How a failed ALSA call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// EPIPE: the buffer overran; `snd_pcm_recover` prepares the stream again.
    Overrun,
    /// ESTRPIPE: the system was suspended; `snd_pcm_recover` resumes or prepares.
    Suspended,
    /// EINTR / EAGAIN: try again.
    Retry,
    /// Anything else (ENODEV when a USB microphone is unplugged, EBADFD, EIO, ...).
    Fatal,
}

/// Classifies an errno from `snd_pcm_readi` / `snd_pcm_wait`.
pub(crate) fn classify(errno: i32) -> Fault {
    match errno {
        libc::EPIPE => Fault::Overrun,
        libc::ESTRPIPE => Fault::Suspended,
        libc::EINTR | libc::EAGAIN => Fault::Retry,
        _ => Fault::Fatal,
    }
}

/// The audio lost to an overrun: the whole buffer (thrown away when the stream is prepared
/// again) plus the time from the overrun to now, if the device's timestamps say so.
/// `since_overrun_ms` is `None` when the timestamps are missing or implausible.
pub(crate) fn overrun_gap_ms(buffer_ms: u64, since_overrun_ms: Option<u64>) -> u64 {
    // More than a minute since the overrun means the timestamps are not usable.
    const PLAUSIBLE_MS: u64 = 60_000;
    buffer_ms
        + since_overrun_ms
            .filter(|&ms| ms <= PLAUSIBLE_MS)
            .unwrap_or(0)
}

/// A timestamp in ms; `None` for the zero timestamp of one never taken. Takes the fields,
/// not the struct: `alsa::timespec` has a private padding field on 32-bit time64 targets.
fn timestamp_ms(sec: i128, nsec: i128) -> Option<i128> {
    if sec == 0 && nsec == 0 {
        return None;
    }
    Some(sec * 1000 + nsec / 1_000_000)
}

fn timespec_ms(t: &alsa::timespec) -> Option<i128> {
    timestamp_ms(i128::from(t.tv_sec), i128::from(t.tv_nsec))
}

/// A description of an errno a person can act on.
fn describe(errno: i32) -> String {
    let base = std::io::Error::from_raw_os_error(errno).to_string();
    let hint = match errno {
        libc::ENOENT => "; no such PCM: list the names with `arecord -L`",
        libc::EBUSY => {
            "; another program has the device open: stop it, or record from `default` or a \
             dsnoop device that can be shared"
        }
        libc::EACCES | libc::EPERM => "; add the user to the `audio` group",
        libc::ENODEV => "; the device is gone (unplugged?)",
        _ => "",
    };
    format!("{base}{hint}")
}

/// The crate error for a failed ALSA call on `device`.
pub(crate) fn alsa_error(device: &str, e: alsa::Error) -> Error {
    Error::Capture {
        device: device.to_owned(),
        call: e.func(),
        message: describe(e.errno()),
    }
}

fn failed(device: &str, call: &'static str, message: impl Into<String>) -> Error {
    Error::Capture {
        device: device.to_owned(),
        call,
        message: message.into(),
    }
}

/// An open, configured ALSA capture PCM.
pub(crate) struct AlsaSource {
    pcm: PCM,
    device: String,
    format: SampleFormat,
    channels: usize,
    period_frames: usize,
    buffer_ms: u64,
    timeout_ms: u32,
    bytes: Vec<u8>,
    overruns_in_a_row: u32,
}

impl AlsaSource {
    /// Opens `config.device` and negotiates interleaved S16_LE (or S32_LE) at the session's
    /// rate and mono if the device offers them, else the closest it has.
    pub(crate) fn open(config: &CaptureConfig) -> Result<(AlsaSource, Negotiated)> {
        let device = config.device.as_str();
        let name = CString::new(device).map_err(|_| Error::InvalidConfig {
            field: "capture.device",
            message: format!("{device:?} contains a NUL byte"),
        })?;
        // Unless asked to, keep `plug` devices from converting rate and channels: their
        // default rate converter is linear interpolation, which folds everything above the
        // new Nyquist frequency back into the speech band. Ours filters first.
        let flags = if config.alsa_conversion {
            0
        } else {
            SND_PCM_NO_AUTO_RESAMPLE | SND_PCM_NO_AUTO_CHANNELS
        };
        // SAFETY: the flags are documented snd_pcm_open mode bits.
        let pcm = unsafe { PCM::open_with_flags(&name, Direction::Capture, false, flags) }
            .map_err(|e| alsa_error(device, e))?;
        let err = |e| alsa_error(device, e);
        {
            let hw = HwParams::any(&pcm).map_err(err)?;
            hw.set_access(Access::RWInterleaved).map_err(err)?;
            let format = if hw.test_format(Format::S16LE).is_ok() {
                Format::S16LE
            } else if hw.test_format(Format::S32LE).is_ok() {
                Format::S32LE
            } else {
                return Err(failed(
                    device,
                    "snd_pcm_hw_params_set_format",
                    "the device offers neither S16_LE nor S32_LE; use a `plughw:` name",
                ));
            };
            hw.set_format(format).map_err(err)?;
            if !config.alsa_conversion {
                hw.set_rate_resample(false).map_err(err)?;
            }
            match config.device_channels {
                Some(c) => hw.set_channels(c).map_err(err)?,
                None if hw.test_channels(1).is_ok() => hw.set_channels(1).map_err(err)?,
                None => {
                    hw.set_channels_near(1).map_err(err)?;
                }
            }
            match config.device_rate {
                Some(r) => hw.set_rate(r, ValueOr::Nearest).map_err(err)?,
                None => choose_rate(&hw, config.sample_rate).map_err(err)?,
            }
            let rate = hw.get_rate().map_err(err)?;
            let period = frames_for_ms(rate, config.period_ms).max(16);
            let period = hw
                .set_period_size_near(period as alsa::pcm::Frames, ValueOr::Nearest)
                .map_err(err)?;
            let buffer = frames_for_ms(rate, config.buffer_ms).max(2 * period as u64);
            hw.set_buffer_size_near(buffer as alsa::pcm::Frames)
                .map_err(err)?;
            pcm.hw_params(&hw).map_err(err)?;
        }
        let hw = pcm.hw_params_current().map_err(err)?;
        let rate = hw.get_rate().map_err(err)?;
        let channels = hw.get_channels().map_err(err)?;
        let period_frames = hw.get_period_size().map_err(err)?;
        let buffer_frames = hw.get_buffer_size().map_err(err)?;
        let format = match hw.get_format().map_err(err)? {
            Format::S16LE => SampleFormat::S16Le,
            Format::S32LE => SampleFormat::S32Le,
            other => {
                return Err(failed(
                    device,
                    "snd_pcm_hw_params_get_format",
                    format!("negotiated {other}, asked for S16_LE or S32_LE"),
                ))
            }
        };
        drop(hw);
        if rate == 0 || channels == 0 || period_frames <= 0 || buffer_frames < period_frames {
            return Err(failed(
                device,
                "snd_pcm_hw_params",
                format!(
                    "implausible parameters: {rate} Hz, {channels} channels, period \
                     {period_frames}, buffer {buffer_frames} frames"
                ),
            ));
        }
        {
            let sw = pcm.sw_params_current().map_err(err)?;
            sw.set_avail_min(period_frames).map_err(err)?;
            // Overrun when the buffer is full (the default, said explicitly).
            sw.set_stop_threshold(buffer_frames).map_err(err)?;
            sw.set_tstamp_mode(true).map_err(err)?;
            pcm.sw_params(&sw).map_err(err)?;
        }
        let negotiated = Negotiated {
            device: device.to_owned(),
            rate,
            channels,
            format,
            period_frames: period_frames as u64,
            buffer_frames: buffer_frames as u64,
            output_rate: config.sample_rate,
        };
        let period_ms = negotiated.period_ms().ceil() as u32;
        let frame_bytes = channels as usize * format.bytes();
        let source = AlsaSource {
            pcm,
            device: device.to_owned(),
            format,
            channels: channels as usize,
            period_frames: period_frames as usize,
            buffer_ms: negotiated.buffer_ms().round() as u64,
            // Wakes at least every two periods to look at the stop flag, also when a device
            // stalls without an error.
            timeout_ms: (2 * period_ms).clamp(20, 500),
            bytes: vec![0; period_frames as usize * frame_bytes],
            overruns_in_a_row: 0,
        };
        Ok((source, negotiated))
    }

    fn fatal(&self, e: alsa::Error) -> Read {
        Read::Fatal(alsa_error(&self.device, e))
    }

    /// Starts the stream if it is prepared but not running (at first, and after recovery).
    fn start_if_prepared(&self) -> Option<Read> {
        if self.pcm.state_raw() == STATE_PREPARED {
            if let Err(e) = self.pcm.start() {
                return Some(self.fatal(e));
            }
        }
        None
    }

    /// Handles an error from `snd_pcm_wait` or `snd_pcm_readi`.
    fn on_error(&mut self, e: alsa::Error) -> Read {
        match classify(e.errno()) {
            Fault::Retry => Read::Idle,
            Fault::Overrun => {
                let gap_ms = overrun_gap_ms(self.buffer_ms, self.ms_since_trigger());
                if let Err(e) = self.pcm.try_recover(e, true) {
                    return self.fatal(e);
                }
                self.overruns_in_a_row += 1;
                if self.overruns_in_a_row > 100 {
                    // Recovering does not help: the stream overruns at once every time.
                    return Read::Fatal(failed(
                        &self.device,
                        "snd_pcm_recover",
                        "the device keeps overrunning right after recovery",
                    ));
                }
                if let Some(r) = self.start_if_prepared() {
                    return r;
                }
                Read::Overrun { gap_ms }
            }
            Fault::Suspended => {
                if let Err(e) = self.pcm.try_recover(e, true) {
                    return self.fatal(e);
                }
                if let Some(r) = self.start_if_prepared() {
                    return r;
                }
                // The audio during the suspend is gone; it was never captured.
                Read::Overrun {
                    gap_ms: overrun_gap_ms(self.buffer_ms, None),
                }
            }
            Fault::Fatal => self.fatal(e),
        }
    }

    /// Milliseconds from the overrun (the trigger timestamp of an XRUN stream) to now.
    fn ms_since_trigger(&self) -> Option<u64> {
        let status = self.pcm.status().ok()?;
        let then = timespec_ms(&status.get_trigger_htstamp())?;
        let now = timespec_ms(&status.get_htstamp())?;
        u64::try_from(now - then).ok()
    }
}

impl Source for AlsaSource {
    fn read(&mut self, out: &mut [i16]) -> Read {
        match self.pcm.state_raw() {
            STATE_SETUP | STATE_PREPARED => {
                if let Err(e) = self.pcm.prepare().and_then(|_| self.pcm.start()) {
                    return self.fatal(e);
                }
            }
            STATE_XRUN => return self.on_error(alsa::Error::new("snd_pcm_readi", libc::EPIPE)),
            STATE_SUSPENDED => {
                return self.on_error(alsa::Error::new("snd_pcm_readi", libc::ESTRPIPE))
            }
            STATE_DISCONNECTED => {
                return self.fatal(alsa::Error::new("snd_pcm_readi", libc::ENODEV));
            }
            _ => {}
        }
        match self.pcm.wait(Some(self.timeout_ms)) {
            Ok(true) => {}
            Ok(false) => return Read::Idle,
            Err(e) => return self.on_error(e),
        }
        let read = self.pcm.io_bytes().readi(&mut self.bytes);
        let frames = match read {
            Ok(n) => n.min(self.period_frames),
            Err(e) => return self.on_error(e),
        };
        self.overruns_in_a_row = 0;
        let samples = frames * self.channels;
        let out = &mut out[..samples];
        match self.format {
            SampleFormat::S16Le => {
                for (o, b) in out.iter_mut().zip(self.bytes.chunks_exact(2)) {
                    *o = i16::from_le_bytes([b[0], b[1]]);
                }
            }
            SampleFormat::S32Le => {
                // The top 16 bits; microphones put their 24 (or fewer) bits at the top.
                for (o, b) in out.iter_mut().zip(self.bytes.chunks_exact(4)) {
                    *o = i16::from_le_bytes([b[2], b[3]]);
                }
            }
        }
        Read::Frames(frames)
    }
}

/// The session's rate if the device has it; else its lowest integer multiple that the
/// device has (cheapest to convert exactly); else the nearest rate it has.
fn choose_rate(hw: &HwParams<'_>, target: u32) -> alsa::Result<()> {
    if hw.test_rate(target).is_ok() {
        return hw.set_rate(target, ValueOr::Nearest);
    }
    for k in 2..=12 {
        let r = target * k;
        if hw.test_rate(r).is_ok() {
            return hw.set_rate(r, ValueOr::Nearest);
        }
    }
    hw.set_rate_near(target, ValueOr::Nearest).map(|_| ())
}

/// Frames in `ms` milliseconds at `rate`.
pub(crate) fn frames_for_ms(rate: u32, ms: u32) -> u64 {
    u64::from(rate) * u64::from(ms) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_are_classified() {
        assert_eq!(classify(libc::EPIPE), Fault::Overrun);
        assert_eq!(classify(libc::ESTRPIPE), Fault::Suspended);
        assert_eq!(classify(libc::EINTR), Fault::Retry);
        assert_eq!(classify(libc::EAGAIN), Fault::Retry);
        for unplugged in [libc::ENODEV, libc::EBADFD, libc::EIO, libc::ENOTTY] {
            assert_eq!(classify(unplugged), Fault::Fatal);
        }
    }

    #[test]
    fn overrun_gap_is_the_buffer_plus_the_time_since_the_overrun() {
        assert_eq!(overrun_gap_ms(200, Some(35)), 235);
        assert_eq!(overrun_gap_ms(200, None), 200);
        // Timestamps from another clock or never set: only the buffer is counted.
        assert_eq!(overrun_gap_ms(200, Some(10_000_000)), 200);
    }

    #[test]
    fn timestamps_convert_to_ms() {
        assert_eq!(timestamp_ms(2, 345_000_000), Some(2345));
        assert_eq!(timestamp_ms(0, 0), None);
    }

    #[test]
    fn errors_name_the_call_and_device_and_a_remedy() {
        let e = alsa_error("hw:7,0", alsa::Error::new("snd_pcm_open", libc::ENOENT));
        let s = e.to_string();
        assert!(s.contains("snd_pcm_open") && s.contains("hw:7,0") && s.contains("arecord -L"));
    }
}
