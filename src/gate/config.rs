//! The gate's settings, with their defaults and the reasons for them.

use crate::config::SessionConfig;
use crate::error::{Error, Result};

/// Real audio sent after the service's silence window, beyond `silence_duration_ms`: the
/// service's own detector decides where speech ended a little after it did (its frames, its
/// smoothing), and it counts the silence from there. 300 ms covers that and keeps the
/// utterance's `completed` within the window plus half a second of the end of speech.
pub const SERVER_SILENCE_MARGIN_MS: u32 = 300;
/// Longest pre-roll accepted (its ring is allocated up front).
pub const MAX_PRE_ROLL_MS: u32 = 10_000;
/// Longest hangover accepted.
pub const MAX_HANGOVER_MS: u32 = 60_000;
/// Most audio the service takes in one manual-mode commit: "continuous audio must not exceed
/// 60 seconds" per commit, in the service's user guide.
pub const MANUAL_COMMIT_LIMIT_MS: u32 = 60_000;
/// How long before [`GateConfig::max_utterance_ms`] a manual-mode utterance may be split at
/// a pause rather than in the middle of a word.
pub const SPLIT_WINDOW_MS: u32 = 10_000;
/// Longest onset run accepted.
pub const MAX_ONSET_MS: u32 = 1_000;

/// Onset threshold for 8 kHz audio. The built-in network was made for 16 kHz; on the 16 kHz
/// copy of 8 kHz speech (nothing above 4 kHz) it scores first words around 0.45 where the
/// same words at 16 kHz score 0.7, while steady noise rises only from about 0.15 to 0.2.
/// Chosen on the project's fixtures: lower values opened the gate on 8 kHz pink noise.
pub const NARROWBAND_ONSET_THRESHOLD: f32 = 0.46;
/// Offset threshold for 8 kHz audio (see [`NARROWBAND_ONSET_THRESHOLD`]).
pub const NARROWBAND_OFFSET_THRESHOLD: f32 = 0.38;

/// How the session ends utterances, which decides how the gate ends what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnMode {
    /// Server VAD: the service ends an utterance once it has received `silence_duration_ms`
    /// of silence (the service's default is 800 ms, its range 200 to 6000 ms).
    ServerVad {
        /// The session's `turn_detection.silence_duration_ms`.
        silence_duration_ms: u32,
    },
    /// Manual mode: the client ends each utterance with `input_audio_buffer.commit`; the
    /// gate's close is that commit.
    Manual,
}

impl Default for TurnMode {
    fn default() -> Self {
        TurnMode::ServerVad {
            silence_duration_ms: 800,
        }
    }
}

/// Settings of a [`Gate`](super::Gate). Every duration is audio time, never wall-clock
/// time.
///
/// ```
/// use qwen_asr_realtime::gate::{GateConfig, TurnMode};
///
/// let config = GateConfig::default()
///     .pre_roll_ms(300)
///     .turn(TurnMode::ServerVad { silence_duration_ms: 400 })
///     .keep_session_open();
/// // The hangover covers the service's silence window plus a margin.
/// assert_eq!(config.effective_hangover_ms(), 700);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GateConfig {
    /// Audio sent from before each onset, so the first syllable (which the detector
    /// recognises only some frames in) is not clipped. Default 500 ms, at most
    /// [`MAX_PRE_ROLL_MS`].
    pub pre_roll_ms: u32,
    /// The least audio sent after the last speech frame before the gate closes. Default
    /// 500 ms. In server-VAD mode the gate sends at least the service's silence window plus
    /// [`SERVER_SILENCE_MARGIN_MS`] (see [`GateConfig::effective_hangover_ms`]).
    pub hangover_ms: u32,
    /// How utterances end. Default: server VAD with the service's 800 ms.
    pub turn: TurnMode,
    /// Score (0 to 1) at or above which a frame counts towards an onset. Default 0.5 for
    /// 16 kHz audio; [`narrowband`](GateConfig::narrowband) (which
    /// [`for_session`](GateConfig::for_session) applies to 8 kHz sessions) lowers it to
    /// [`NARROWBAND_ONSET_THRESHOLD`].
    pub onset_threshold: f32,
    /// Score at or above which a frame keeps an open gate open; lower than the onset
    /// threshold so that the quieter ends of words do not start the hangover. Default 0.4
    /// (8 kHz: [`NARROWBAND_OFFSET_THRESHOLD`]). The built-in network goes on scoring room
    /// noise 0.3 to 0.4 for many seconds after speech; what closes the gate there is
    /// [`offset_above_floor_db`](GateConfig::offset_above_floor_db).
    pub offset_threshold: f32,
    /// How far (dB) a frame's level must stand above the tracked noise floor to count
    /// towards an onset. Default 6 dB: voiced speech at 10 dB SNR clears it, steady hum,
    /// fan or pink noise (which the network may score as speech) does not, and neither do
    /// the quiet frames after a click.
    pub onset_above_floor_db: f64,
    /// How far a frame must stand above the noise floor to keep an open gate open.
    /// Default 3 dB.
    pub offset_above_floor_db: f64,
    /// How long scores must stay at or above the onset threshold before the gate opens,
    /// rounded up to whole 16 ms frames. Default 48 ms (three frames): a single click or
    /// knock frame does not open the gate.
    pub onset_ms: u32,
    /// Frames quieter than this (RMS in dBFS, 0 dBFS being a full-scale square wave) are not
    /// speech and the detector does not run on them. Default -55 dBFS, below soft speech at
    /// a few metres and above a quiet room's self-noise on a typical MEMS microphone.
    pub energy_floor_dbfs: f64,
    /// Manual mode only: an utterance is committed (and goes on) once it has lasted this
    /// long, at the first pause in the [`SPLIT_WINDOW_MS`] before, or at the limit itself,
    /// because the service takes at most [`MANUAL_COMMIT_LIMIT_MS`] per commit. Default
    /// 50 s, at most the service's limit. (In server-VAD mode the service cuts utterances.)
    pub max_utterance_ms: u32,
    /// After this much audio with the gate closed, the gate reports
    /// [`Output::Idle`](super::Output::Idle), on which a [`GatedSender`](super::GatedSender)
    /// ends the session cleanly and keeps no connection until the next onset opens a new one
    /// (the first word waits in the outgoing queue meanwhile). `None` keeps the session open.
    /// Default 30 s.
    pub idle_timeout_ms: Option<u32>,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            pre_roll_ms: 500,
            hangover_ms: 500,
            turn: TurnMode::default(),
            onset_threshold: 0.5,
            offset_threshold: 0.4,
            onset_above_floor_db: 6.0,
            offset_above_floor_db: 3.0,
            onset_ms: 48,
            energy_floor_dbfs: -55.0,
            idle_timeout_ms: Some(30_000),
            max_utterance_ms: 50_000,
        }
    }
}

impl GateConfig {
    /// The defaults, with the turn mode of `session` (its silence window in server-VAD
    /// mode, or manual mode) and, for an 8 kHz session, the
    /// [`narrowband`](GateConfig::narrowband) thresholds.
    pub fn for_session(session: &SessionConfig) -> GateConfig {
        let turn = match &session.turn_detection {
            Some(td) => TurnMode::ServerVad {
                silence_duration_ms: td.silence_duration_ms,
            },
            None => TurnMode::Manual,
        };
        let config = GateConfig::default().turn(turn);
        if session.sample_rate == 8_000 {
            config.narrowband()
        } else {
            config
        }
    }

    /// The score thresholds for 8 kHz audio: [`NARROWBAND_ONSET_THRESHOLD`] and
    /// [`NARROWBAND_OFFSET_THRESHOLD`].
    pub fn narrowband(self) -> Self {
        self.onset_threshold(NARROWBAND_ONSET_THRESHOLD)
            .offset_threshold(NARROWBAND_OFFSET_THRESHOLD)
    }

    /// Sets [`pre_roll_ms`](GateConfig::pre_roll_ms).
    pub fn pre_roll_ms(mut self, ms: u32) -> Self {
        self.pre_roll_ms = ms;
        self
    }

    /// Sets [`hangover_ms`](GateConfig::hangover_ms).
    pub fn hangover_ms(mut self, ms: u32) -> Self {
        self.hangover_ms = ms;
        self
    }

    /// Sets [`turn`](GateConfig::turn).
    pub fn turn(mut self, turn: TurnMode) -> Self {
        self.turn = turn;
        self
    }

    /// Sets [`onset_threshold`](GateConfig::onset_threshold).
    pub fn onset_threshold(mut self, score: f32) -> Self {
        self.onset_threshold = score;
        self
    }

    /// Sets [`offset_threshold`](GateConfig::offset_threshold).
    pub fn offset_threshold(mut self, score: f32) -> Self {
        self.offset_threshold = score;
        self
    }

    /// Sets [`onset_above_floor_db`](GateConfig::onset_above_floor_db).
    pub fn onset_above_floor_db(mut self, db: f64) -> Self {
        self.onset_above_floor_db = db;
        self
    }

    /// Sets [`offset_above_floor_db`](GateConfig::offset_above_floor_db).
    pub fn offset_above_floor_db(mut self, db: f64) -> Self {
        self.offset_above_floor_db = db;
        self
    }

    /// Sets [`onset_ms`](GateConfig::onset_ms).
    pub fn onset_ms(mut self, ms: u32) -> Self {
        self.onset_ms = ms;
        self
    }

    /// Sets [`energy_floor_dbfs`](GateConfig::energy_floor_dbfs).
    pub fn energy_floor_dbfs(mut self, dbfs: f64) -> Self {
        self.energy_floor_dbfs = dbfs;
        self
    }

    /// Sets [`idle_timeout_ms`](GateConfig::idle_timeout_ms).
    pub fn idle_timeout_ms(mut self, ms: Option<u32>) -> Self {
        self.idle_timeout_ms = ms;
        self
    }

    /// Sets [`max_utterance_ms`](GateConfig::max_utterance_ms).
    pub fn max_utterance_ms(mut self, ms: u32) -> Self {
        self.max_utterance_ms = ms;
        self
    }

    /// Never reports idleness: the session stays open through any silence, kept alive by the
    /// keepalive pings. Should the server close it anyway while the gate is closed and every
    /// result is in, that is no error and no loss: the next onset opens a new session.
    pub fn keep_session_open(self) -> Self {
        self.idle_timeout_ms(None)
    }

    /// The audio actually sent after the last speech frame.
    ///
    /// Why real audio and not a commit or synthetic silence in server-VAD mode: the service
    /// ends an utterance only after it has *received* `silence_duration_ms` of silence, so a
    /// gate that stopped at the end of speech would leave the last utterance open until the
    /// next speech, perhaps hours later, and a commit is refused in that mode. Sending the
    /// room's own audio for the window (plus [`SERVER_SILENCE_MARGIN_MS`]) costs the same as
    /// synthetic silence (both are billed as audio), keeps the device and service timelines
    /// identical (nothing is sent that was not said), and if the speaker goes on within the
    /// window the words arrive unbroken in the same utterance. In manual mode the close is
    /// the commit, so only [`hangover_ms`](GateConfig::hangover_ms) is sent.
    pub fn effective_hangover_ms(&self) -> u32 {
        match self.turn {
            TurnMode::ServerVad {
                silence_duration_ms,
            } => self
                .hangover_ms
                .max(silence_duration_ms.saturating_add(SERVER_SILENCE_MARGIN_MS)),
            TurnMode::Manual => self.hangover_ms,
        }
    }

    /// Checks every value; a [`Gate`](super::Gate) is only made from a valid config.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &'static str, message: String| Err(Error::InvalidConfig { field, message });
        if self.pre_roll_ms > MAX_PRE_ROLL_MS {
            return bad(
                "gate.pre_roll_ms",
                format!("{} ms is above {MAX_PRE_ROLL_MS} ms", self.pre_roll_ms),
            );
        }
        if self.effective_hangover_ms() > MAX_HANGOVER_MS {
            return bad(
                "gate.hangover_ms",
                format!(
                    "{} ms (with the silence window) is above {MAX_HANGOVER_MS} ms",
                    self.effective_hangover_ms()
                ),
            );
        }
        if !(self.onset_threshold >= 0.0 && self.onset_threshold <= 1.0) {
            return bad(
                "gate.onset_threshold",
                format!("{} is outside 0..=1", self.onset_threshold),
            );
        }
        if !(self.offset_threshold >= 0.0 && self.offset_threshold <= self.onset_threshold) {
            return bad(
                "gate.offset_threshold",
                format!(
                    "{} is outside 0..={} (the onset threshold)",
                    self.offset_threshold, self.onset_threshold
                ),
            );
        }
        if !(0.0..=60.0).contains(&self.onset_above_floor_db) {
            return bad(
                "gate.onset_above_floor_db",
                format!("{} dB is outside 0..=60 dB", self.onset_above_floor_db),
            );
        }
        if !(0.0..=self.onset_above_floor_db).contains(&self.offset_above_floor_db) {
            return bad(
                "gate.offset_above_floor_db",
                format!(
                    "{} dB is outside 0..={} dB (the onset's)",
                    self.offset_above_floor_db, self.onset_above_floor_db
                ),
            );
        }
        if self.onset_ms == 0 || self.onset_ms > MAX_ONSET_MS {
            return bad(
                "gate.onset_ms",
                format!("{} ms is outside 1..={MAX_ONSET_MS} ms", self.onset_ms),
            );
        }
        if self.energy_floor_dbfs.is_nan() || self.energy_floor_dbfs > 0.0 {
            return bad(
                "gate.energy_floor_dbfs",
                format!(
                    "{} is not a level at or below 0 dBFS",
                    self.energy_floor_dbfs
                ),
            );
        }
        if self.max_utterance_ms < SPLIT_WINDOW_MS || self.max_utterance_ms > MANUAL_COMMIT_LIMIT_MS
        {
            return bad(
                "gate.max_utterance_ms",
                format!(
                    "{} ms is outside {SPLIT_WINDOW_MS}..={MANUAL_COMMIT_LIMIT_MS} ms",
                    self.max_utterance_ms
                ),
            );
        }
        if self.idle_timeout_ms == Some(0) {
            return bad(
                "gate.idle_timeout_ms",
                "0 ms; use None to keep the session open".to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangover_covers_the_server_silence_window_only_in_vad_mode() {
        let vad = GateConfig::default();
        assert_eq!(vad.effective_hangover_ms(), 800 + SERVER_SILENCE_MARGIN_MS);
        let long = GateConfig::default().hangover_ms(2_000);
        assert_eq!(long.effective_hangover_ms(), 2_000);
        let manual = GateConfig::for_session(&SessionConfig::manual());
        assert_eq!(manual.turn, TurnMode::Manual);
        assert_eq!(manual.effective_hangover_ms(), 500);
        let quick = GateConfig::for_session(&SessionConfig::vad().silence_duration_ms(400));
        assert_eq!(quick.effective_hangover_ms(), 700);
        assert_eq!(quick.onset_threshold, 0.5);
        let narrow = GateConfig::for_session(&SessionConfig::vad().sample_rate(8_000));
        assert_eq!(narrow.onset_threshold, NARROWBAND_ONSET_THRESHOLD);
        assert!(narrow.validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let field = |c: GateConfig| match c.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert!(GateConfig::default().validate().is_ok());
        assert_eq!(
            field(GateConfig::default().pre_roll_ms(10_001)),
            "gate.pre_roll_ms"
        );
        assert_eq!(
            field(GateConfig::default().hangover_ms(60_001)),
            "gate.hangover_ms"
        );
        assert_eq!(
            field(GateConfig::default().onset_threshold(f32::NAN)),
            "gate.onset_threshold"
        );
        assert_eq!(
            field(GateConfig::default().offset_threshold(0.7)),
            "gate.offset_threshold"
        );
        assert_eq!(
            field(GateConfig::default().onset_above_floor_db(-1.0)),
            "gate.onset_above_floor_db"
        );
        assert_eq!(
            field(GateConfig::default().offset_above_floor_db(7.0)),
            "gate.offset_above_floor_db"
        );
        assert_eq!(field(GateConfig::default().onset_ms(0)), "gate.onset_ms");
        assert_eq!(
            field(GateConfig::default().energy_floor_dbfs(1.0)),
            "gate.energy_floor_dbfs"
        );
        assert_eq!(
            field(GateConfig::default().idle_timeout_ms(Some(0))),
            "gate.idle_timeout_ms"
        );
        assert!(GateConfig::default()
            .energy_floor_dbfs(f64::NEG_INFINITY)
            .validate()
            .is_ok());
    }
}
