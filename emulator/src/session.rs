//! The protocol state of one emulated session: client events in (`session.update`,
//! `input_audio_buffer.append`/`.commit`, `session.finish`), server events out.  No I/O here: the connection thread feeds text frames in and writes out whatever
//! [`Reply`]s come back, so everything the session does follows from what the client sent.

use base64::Engine as _;
use log::debug;
use serde_json::{json, Value};

use super::digest::{transcript_for, AudioDigest};
use super::vad::{Transition, Vad, FRAME_MS};
use super::{ItemRecord, SessionRecord};

/// The language codes the service accepts for `input_audio_transcription.language` (the
/// service's documented list of January 2026: 27 codes; omitting the language means automatic
/// detection). A copy of the service's table, not the client's: the emulator checks what a
/// client sends instead of agreeing with it.
const LANGUAGES: [&str; 27] = [
    "zh", "yue", "en", "ja", "de", "ko", "ru", "fr", "pt", "ar", "it", "es", "hi", "id", "th",
    "tr", "uk", "vi", "cs", "da", "fil", "fi", "is", "ms", "no", "pl", "sv",
];

/// Formats the service accepts for `input_audio_format`: the documentation says `pcm` and
/// `opus`, the Java SDK sends `pcm16` by default, and a live test saw `wav` accepted. The emulator reads
/// every format as 16-bit little-endian PCM (it skips no WAV header), except `opus` when built
/// with the feature `opus`: an Ogg Opus stream, decoded to PCM.
const FORMATS: [&str; 4] = ["pcm", "pcm16", "opus", "wav"];
const SAMPLE_RATES: [u32; 2] = [8000, 16000];
/// Documented ranges and defaults of `turn_detection`: `threshold` in [-1, 1] (default 0.2),
/// `silence_duration_ms` in [200, 6000] (default 800).
const THRESHOLD_RANGE: (f64, f64) = (-1.0, 1.0);
const SILENCE_DURATION_MS_RANGE: (u64, u64) = (200, 6000);
const DEFAULT_THRESHOLD: f64 = 0.2;
const DEFAULT_SILENCE_DURATION_MS: u64 = 800;
/// Reported when the client did not ask for a language (the emulator "detects" English).
const DETECTED_LANGUAGE: &str = "en";

/// What the connection must do next, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// Send this text frame.
    Send(String),
    /// Send a close frame and end the connection; nothing after it is processed.
    Close { code: u16, reason: String },
}

/// `turn_detection` in VAD mode.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TurnDetection {
    threshold: f64,
    silence_duration_ms: u64,
}

/// The session configuration that `session.update` merges into.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    input_audio_format: String,
    sample_rate: u32,
    language: Option<String>,
    /// `None` = Manual mode (`turn_detection: null`).
    turn_detection: Option<TurnDetection>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_audio_format: "pcm".into(),
            sample_rate: 16000,
            language: None,
            turn_detection: Some(TurnDetection {
                threshold: DEFAULT_THRESHOLD,
                silence_duration_ms: DEFAULT_SILENCE_DURATION_MS,
            }),
        }
    }
}

/// An utterance the VAD is inside of.
#[derive(Debug)]
struct Speech {
    item_id: String,
    /// Session time at the end of the last voiced frame (`speech_stopped.audio_end_ms`).
    end_ms: u64,
    /// Audio received since speech started, drives the partials.
    elapsed_ms: u64,
    next_partial_ms: u64,
}

/// A rejected `session.update` field: the dotted parameter and a message.
type Invalid = (String, String);

/// Protocol state of one session.
#[derive(Debug)]
pub(crate) struct Session {
    id: String,
    model: String,
    config: Config,
    partial_interval_ms: u64,
    /// Session audio received so far, in bytes.
    audio_bytes: u64,
    /// Audio since the last commit (the "input audio buffer").
    buffer: AudioDigest,
    /// The incomplete VAD frame carried between appends, so framing ignores chunking.
    frame: Vec<u8>,
    /// Whole VAD frames so far: the session clock, `FRAME_MS` per frame.
    frames: u64,
    /// Built at the first audio in VAD mode, when the configuration can no longer change.
    vad: Option<Vad>,
    speech: Option<Speech>,
    previous_item_id: Option<String>,
    /// Audio in committed items, for `usage.duration`.
    committed: AudioDigest,
    ended: bool,
    /// Keep the audio itself in the record (`EmulatorConfig::record_audio`).
    record_audio: bool,
    /// An `opus` session's stream reader, made at the first append (the configuration cannot
    /// change after it).
    #[cfg(feature = "opus")]
    opus: Option<crate::ogg_opus::OggOpusReader>,
    /// Why the `opus` session's stream was refused: every later append gets an error.
    #[cfg(feature = "opus")]
    opus_refused: Option<String>,
}

/// `prefix` followed by 21 random alphanumerics (lowercase hex), like the service's ids.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 21);
    s.push_str(prefix);
    push_random_hex(&mut s, 21);
    s
}

/// Appends `digits` random lowercase hex digits. The randomness comes from std's per-process
/// random SipHash keys mixed with a counter: unique ids without a dependency for them.
fn push_random_hex(s: &mut String, digits: usize) {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX_DIGITS_PER_U64: usize = 16;
    let mut left = digits;
    while left > 0 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let n = h.finish();
        for i in 0..left.min(HEX_DIGITS_PER_U64) {
            let nibble = (n >> (60 - 4 * i)) & 15;
            s.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
        }
        left = left.saturating_sub(HEX_DIGITS_PER_U64);
    }
}

impl Session {
    pub(crate) fn new(model: String, partial_interval_ms: u64, record_audio: bool) -> Self {
        Session {
            id: new_id("sess_"),
            model,
            config: Config::default(),
            partial_interval_ms,
            audio_bytes: 0,
            buffer: AudioDigest::default(),
            frame: Vec::new(),
            frames: 0,
            vad: None,
            speech: None,
            previous_item_id: None,
            committed: AudioDigest::default(),
            ended: false,
            record_audio,
            #[cfg(feature = "opus")]
            opus: None,
            #[cfg(feature = "opus")]
            opus_refused: None,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// A fresh record for this session, holding the configuration of `session.created`.
    pub(crate) fn new_record(
        &self,
        headers: Vec<(String, String)>,
        query: String,
    ) -> SessionRecord {
        SessionRecord {
            id: self.id.clone(),
            model: self.model.clone(),
            headers,
            query,
            client_events: Vec::new(),
            appends: 0,
            config: self.session_object(),
            audio: AudioDigest::default(),
            audio_data: Vec::new(),
            opus_data: Vec::new(),
            opus_error: None,
            items: Vec::new(),
            finished: false,
            close_code: None,
        }
    }

    /// The `session.created` event, the first thing the server sends.
    pub(crate) fn created(&self) -> Reply {
        self.event(
            "session.created",
            json!({ "session": self.session_object() }),
        )
    }

    /// The `session` object of `session.created` / `session.updated`: `id`, `object`
    /// (`realtime.session`), `model`, `modalities` (`["text"]`), `input_audio_format`,
    /// `sample_rate`, `input_audio_transcription` (`model`, and `language` when set) and
    /// `turn_detection` (`type`, `threshold`, `silence_duration_ms`, or null in Manual mode),
    /// as the service echoes a merged configuration.
    fn session_object(&self) -> Value {
        let c = &self.config;
        let mut transcription = json!({ "model": self.model });
        if let Some(language) = &c.language {
            transcription["language"] = json!(language);
        }
        let turn_detection = match c.turn_detection {
            Some(td) => json!({
                "type": "server_vad",
                "threshold": td.threshold,
                "silence_duration_ms": td.silence_duration_ms,
            }),
            None => Value::Null,
        };
        json!({
            "id": self.id,
            "object": "realtime.session",
            "model": self.model,
            "modalities": ["text"],
            "input_audio_format": c.input_audio_format,
            "sample_rate": c.sample_rate,
            "input_audio_transcription": transcription,
            "turn_detection": turn_detection,
        })
    }

    /// Handles one text frame from the client.
    pub(crate) fn on_text(&mut self, text: &str, rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        if self.ended {
            return;
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                debug!("emulator {}: <- invalid JSON ({e})", self.id);
                self.error(
                    out,
                    "invalid_json",
                    format!("Invalid JSON: {e}"),
                    None,
                    None,
                );
                return;
            }
        };
        let event_type = v.get("type").and_then(Value::as_str).unwrap_or("");
        let event_id = v.get("event_id").and_then(Value::as_str).map(str::to_owned);
        let event_id = event_id.as_deref();
        debug!("emulator {}: <- {event_type}", self.id);
        if event_type == "input_audio_buffer.append" {
            rec.appends += 1;
            self.append(&v, event_id, rec, out);
            return;
        }
        rec.client_events.push(v.clone());
        match event_type {
            "session.update" => self.update(&v, event_id, rec, out),
            "input_audio_buffer.commit" => self.commit(event_id, rec, out),
            "session.finish" => self.finish(rec, out),
            "" => self.error(
                out,
                "missing_required_parameter",
                "Missing required parameter: 'type'.".into(),
                Some("type"),
                event_id,
            ),
            other => self.error(
                out,
                "invalid_value",
                format!(
                    "Invalid value: '{other}'. Supported values are: 'session.update', \
                     'input_audio_buffer.append', 'input_audio_buffer.commit', 'session.finish'."
                ),
                Some("type"),
                event_id,
            ),
        }
    }

    /// A binary frame from the client: the protocol has none (audio goes in base64 JSON).
    pub(crate) fn on_binary(&mut self, len: usize, out: &mut Vec<Reply>) {
        if self.ended {
            return;
        }
        debug!("emulator {}: <- binary frame of {len} bytes", self.id);
        self.error(
            out,
            "invalid_value",
            "Binary frames are not supported; send JSON text events with base64 audio.".into(),
            None,
            None,
        );
    }

    // ---- client events ---------------------------------------------------------------------

    fn update(
        &mut self,
        v: &Value,
        event_id: Option<&str>,
        rec: &mut SessionRecord,
        out: &mut Vec<Reply>,
    ) {
        if self.audio_bytes > 0 {
            // The live gateway closes with 1007 on a session.update once audio has started
            // (seen by a third party testing the live service).
            self.end(
                out,
                1007,
                "session.update is not allowed after audio has been appended",
            );
            return;
        }
        match self.merged(v.get("session")) {
            Ok(config) => {
                self.config = config;
                let session = self.session_object();
                rec.config = session.clone();
                out.push(self.event("session.updated", json!({ "session": session })));
            }
            Err((param, message)) => {
                self.error(out, "invalid_value", message, Some(&param), event_id)
            }
        }
    }

    /// The current configuration with `session` merged in, or the first invalid field. Absent
    /// or null fields keep their value, except `turn_detection: null` (Manual mode) and
    /// `language: null` (automatic detection). Undocumented fields the SDKs send
    /// (`modalities`, `voice`, `output_audio_format`, `prefix_padding_ms`, `corpus`, the
    /// transcription `model`) are accepted and ignored.
    fn merged(&self, session: Option<&Value>) -> Result<Config, Invalid> {
        let invalid = |param: &str, message: String| (format!("session.{param}"), message);
        let Some(session) = session.filter(|s| s.is_object()) else {
            return Err((
                "session".into(),
                "Missing required parameter: 'session' (an object).".into(),
            ));
        };
        let mut c = self.config.clone();
        if let Some(f) = present(session, "input_audio_format") {
            match f.as_str().filter(|f| FORMATS.contains(f)) {
                Some(f) => c.input_audio_format = f.to_owned(),
                None => {
                    return Err(invalid(
                        "input_audio_format",
                        format!(
                        "Invalid value: {f}. Supported values are: 'pcm', 'pcm16', 'opus', 'wav'."
                    ),
                    ))
                }
            }
        }
        if let Some(r) = present(session, "sample_rate") {
            match r
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| SAMPLE_RATES.contains(r))
            {
                Some(r) => c.sample_rate = r,
                None => {
                    return Err(invalid(
                        "sample_rate",
                        format!("Invalid value: {r}. Supported values are: 8000, 16000."),
                    ))
                }
            }
        }
        match session.get("input_audio_transcription") {
            None => {}
            Some(Value::Null) => c.language = None,
            Some(t) if t.is_object() => match t.get("language") {
                None => {}
                Some(Value::Null) => c.language = None,
                Some(l) => match l.as_str().filter(|l| LANGUAGES.contains(l)) {
                    Some(l) => c.language = Some(l.to_owned()),
                    None => {
                        return Err(invalid(
                            "input_audio_transcription.language",
                            format!(
                                "Invalid value: {l}. Supported values are: {}.",
                                LANGUAGES.join(", ")
                            ),
                        ))
                    }
                },
            },
            Some(t) => {
                return Err(invalid(
                    "input_audio_transcription",
                    format!("Invalid value: {t}. Expected an object or null."),
                ))
            }
        }
        match session.get("turn_detection") {
            None => {}
            Some(Value::Null) => c.turn_detection = None,
            Some(td) if td.is_object() => {
                c.turn_detection = Some(self.turn_detection(td, invalid)?)
            }
            Some(td) => {
                return Err(invalid(
                    "turn_detection",
                    format!("Invalid value: {td}. Expected an object, or null for Manual mode."),
                ))
            }
        }
        Ok(c)
    }

    fn turn_detection(
        &self,
        td: &Value,
        invalid: impl Fn(&str, String) -> Invalid,
    ) -> Result<TurnDetection, Invalid> {
        // Switching from Manual mode back to VAD starts from the documented defaults.
        let mut merged = self.config.turn_detection.unwrap_or(TurnDetection {
            threshold: DEFAULT_THRESHOLD,
            silence_duration_ms: DEFAULT_SILENCE_DURATION_MS,
        });
        match td.get("type") {
            Some(Value::String(t)) if t == "server_vad" => {}
            None | Some(Value::Null) => {
                return Err(invalid(
                    "turn_detection.type",
                    "Missing required parameter: 'session.turn_detection.type'.".into(),
                ))
            }
            Some(t) => {
                return Err(invalid(
                    "turn_detection.type",
                    format!("Invalid value: {t}. Supported values are: 'server_vad'."),
                ))
            }
        }
        if let Some(t) = present(td, "threshold") {
            let (lo, hi) = THRESHOLD_RANGE;
            match t.as_f64().filter(|t| (lo..=hi).contains(t)) {
                Some(t) => merged.threshold = t,
                None => {
                    return Err(invalid(
                        "turn_detection.threshold",
                        format!("Invalid value: {t}. Expected a number between {lo} and {hi}."),
                    ))
                }
            }
        }
        if let Some(s) = present(td, "silence_duration_ms") {
            let (lo, hi) = SILENCE_DURATION_MS_RANGE;
            match s.as_u64().filter(|s| (lo..=hi).contains(s)) {
                Some(s) => merged.silence_duration_ms = s,
                None => {
                    return Err(invalid(
                        "turn_detection.silence_duration_ms",
                        format!("Invalid value: {s}. Expected an integer between {lo} and {hi}."),
                    ))
                }
            }
        }
        Ok(merged)
    }

    fn append(
        &mut self,
        v: &Value,
        event_id: Option<&str>,
        rec: &mut SessionRecord,
        out: &mut Vec<Reply>,
    ) {
        let Some(b64) = v.get("audio").and_then(Value::as_str) else {
            self.error(
                out,
                "missing_required_parameter",
                "Missing required parameter: 'audio' (a base64 string).".into(),
                Some("audio"),
                event_id,
            );
            return;
        };
        let audio = match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(a) => a,
            Err(e) => {
                self.error(
                    out,
                    "invalid_value",
                    format!("Invalid 'audio': not valid base64 ({e}); nothing was appended."),
                    Some("audio"),
                    event_id,
                );
                return;
            }
        };
        self.audio_bytes += audio.len() as u64;
        #[cfg(feature = "opus")]
        if self.config.input_audio_format == "opus" {
            self.append_opus(&audio, event_id, rec, out);
            return;
        }
        self.accept_pcm(&audio, rec, out);
    }

    /// Session audio as 16-bit little-endian PCM, from an append or decoded from Opus: into the
    /// record, then the VAD or the Manual-mode buffer.
    fn accept_pcm(&mut self, audio: &[u8], rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        rec.audio.update(audio);
        if self.record_audio {
            rec.audio_data.extend_from_slice(audio);
        }
        if let Some(td) = self.config.turn_detection {
            self.feed_vad(audio, td, rec, out);
        } else {
            self.buffer.update(audio);
        }
    }

    /// One append of an `opus` session: the next bytes of its Ogg Opus stream. Whatever whole
    /// pages it completes are checked and decoded, and their audio goes on as PCM would. The
    /// audio of the good pages before a bad one is kept; from the bad one on the stream is
    /// refused, as a strict server would, and said so on every append.
    #[cfg(feature = "opus")]
    fn append_opus(
        &mut self,
        ogg: &[u8],
        event_id: Option<&str>,
        rec: &mut SessionRecord,
        out: &mut Vec<Reply>,
    ) {
        if let Some(reason) = &self.opus_refused {
            let message = format!(
                "Invalid 'audio': this session's Ogg Opus stream was refused earlier ({reason}); \
                 nothing of this append was decoded."
            );
            self.error(out, "invalid_value", message, Some("audio"), event_id);
            return;
        }
        if self.record_audio {
            rec.opus_data.extend_from_slice(ogg);
        }
        let rate = self.config.sample_rate;
        let mut reader = self
            .opus
            .take()
            .unwrap_or_else(|| crate::ogg_opus::OggOpusReader::new(rate).expect_input_rate(rate));
        // Page by page: one append may hold many pages, and a page may decode to seconds of
        // audio, so nothing holds more than one page's audio here.
        let mut bytes = Vec::new();
        let result = reader.push_each(ogg, |pcm| {
            bytes.clear();
            bytes.extend(pcm.iter().flat_map(|s| s.to_le_bytes()));
            self.accept_pcm(&bytes, rec, out);
        });
        self.opus = Some(reader);
        if let Err(e) = result {
            let reason = e.to_string();
            debug!("emulator {}: Ogg Opus stream refused: {reason}", self.id);
            let message = format!(
                "Invalid 'audio': not a valid Ogg Opus stream: {reason}. The stream is refused: \
                 later appends of this session are not decoded."
            );
            self.error(out, "invalid_value", message, Some("audio"), event_id);
            rec.opus_error = Some(reason.clone());
            self.opus_refused = Some(reason);
        }
    }

    /// Splits the audio into 10 ms frames across appends, digesting each piece into the buffer
    /// before its frame is judged: a commit at a frame's end then holds exactly the audio up to
    /// and including that frame.
    fn feed_vad(
        &mut self,
        mut audio: &[u8],
        td: TurnDetection,
        rec: &mut SessionRecord,
        out: &mut Vec<Reply>,
    ) {
        let frame_bytes = Vad::frame_bytes(self.config.sample_rate);
        if self.vad.is_none() {
            self.vad = Some(Vad::new(td.threshold, td.silence_duration_ms));
        }
        while !audio.is_empty() {
            let take = (frame_bytes - self.frame.len()).min(audio.len());
            let (piece, rest) = audio.split_at(take);
            audio = rest;
            self.buffer.update(piece);
            self.frame.extend_from_slice(piece);
            if self.frame.len() == frame_bytes {
                let frame = std::mem::take(&mut self.frame);
                self.frames += 1;
                self.on_frame(&frame, rec, out);
                self.frame = frame;
                self.frame.clear();
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8], rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        let Some(vad) = self.vad.as_mut() else { return };
        let (voiced, transition) = vad.push_frame(frame);
        let frame_end_ms = self.frames * FRAME_MS;
        if transition == Transition::Started {
            let item_id = new_id("item_");
            out.push(self.event(
                "input_audio_buffer.speech_started",
                json!({ "audio_start_ms": frame_end_ms - FRAME_MS, "item_id": item_id }),
            ));
            self.speech = Some(Speech {
                item_id,
                end_ms: frame_end_ms,
                elapsed_ms: 0,
                next_partial_ms: self.partial_interval_ms,
            });
        }
        let Some(speech) = self.speech.as_mut() else {
            return;
        };
        if voiced {
            speech.end_ms = frame_end_ms;
        }
        speech.elapsed_ms += FRAME_MS;
        if transition == Transition::Stopped {
            self.end_utterance(rec, out);
            return;
        }
        // 0 disables the partials during speech (the one before `completed` stays).
        if self.partial_interval_ms > 0 && speech.elapsed_ms >= speech.next_partial_ms {
            speech.next_partial_ms += self.partial_interval_ms;
            let stash = format!("[… {:.2} s]", speech.elapsed_ms as f64 / 1000.0);
            let item_id = speech.item_id.clone();
            out.push(self.partial(&item_id, "", &stash));
        }
    }

    fn commit(&mut self, event_id: Option<&str>, rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        if self.config.turn_detection.is_some() {
            self.error(
                out,
                "invalid_value",
                "Input audio buffer commit is disabled in server_vad mode: the server commits \
                 on its own. Set turn_detection to null for Manual mode."
                    .into(),
                None,
                event_id,
            );
        } else if self.buffer.bytes == 0 {
            // The service's wording is undocumented; this one was seen in a client's test
            // fixture.
            self.error(
                out,
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small, or have no audio.".into(),
                None,
                event_id,
            );
        } else {
            let item_id = new_id("item_");
            self.commit_buffer(item_id, rec, out);
        }
    }

    fn finish(&mut self, rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        if self.config.turn_detection.is_some() {
            if self.speech.is_some() {
                // Complete the pending utterance with everything buffered, the incomplete
                // frame included, so the items still add up to the session's audio.
                if let Some(vad) = self.vad.as_mut() {
                    vad.reset();
                }
                self.end_utterance(rec, out);
            }
            // Otherwise the buffer is silence after the last utterance: discarded.
        } else if self.buffer.bytes > 0 {
            // Manual mode flushes an uncommitted buffer: the live service, given
            // session.finish without a commit, sent `completed`, then `session.finished`.
            let item_id = new_id("item_");
            self.commit_buffer(item_id, rec, out);
        }
        out.push(self.event("session.finished", json!({})));
        rec.finished = true;
        self.end(out, 1000, "");
    }

    // ---- server-side steps -----------------------------------------------------------------

    /// VAD mode: speech_stopped, then the commit sequence.
    fn end_utterance(&mut self, rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        let Some(speech) = self.speech.take() else {
            return;
        };
        out.push(self.event(
            "input_audio_buffer.speech_stopped",
            json!({ "audio_end_ms": speech.end_ms, "item_id": speech.item_id }),
        ));
        self.commit_buffer(speech.item_id, rec, out);
    }

    /// committed → conversation.item.created → one partial → completed, for the whole buffer.
    fn commit_buffer(&mut self, item_id: String, rec: &mut SessionRecord, out: &mut Vec<Reply>) {
        let audio = std::mem::take(&mut self.buffer);
        let previous = self.previous_item_id.replace(item_id.clone());
        self.committed.bytes += audio.bytes;
        let transcript = transcript_for(audio, self.config.sample_rate);
        out.push(self.event(
            "input_audio_buffer.committed",
            json!({ "previous_item_id": previous, "item_id": item_id }),
        ));
        out.push(self.event(
            "conversation.item.created",
            json!({
                "previous_item_id": previous,
                "item": {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": "user",
                    "content": [{ "type": "input_audio", "transcript": null }],
                },
            }),
        ));
        // The last partial holds the final text, split into a confirmed prefix and a stash.
        let half = transcript
            .char_indices()
            .nth(transcript.chars().count() / 2)
            .map_or(transcript.len(), |(i, _)| i);
        let (text, stash) = transcript.split_at(half);
        out.push(self.partial(&item_id, text, stash));
        let duration = (self.committed.seconds(self.config.sample_rate) * 100.0).round() / 100.0;
        out.push(self.event(
            "conversation.item.input_audio_transcription.completed",
            json!({
                "item_id": item_id,
                "content_index": 0,
                "language": self.language(),
                "emotion": "neutral",
                "transcript": transcript,
                "usage": { "duration": duration },
            }),
        ));
        rec.items.push(ItemRecord {
            item_id,
            audio,
            start: self.committed.bytes - audio.bytes,
            transcript,
        });
    }

    fn partial(&self, item_id: &str, text: &str, stash: &str) -> Reply {
        self.event(
            "conversation.item.input_audio_transcription.text",
            json!({
                "item_id": item_id,
                "content_index": 0,
                "language": self.language(),
                "emotion": "neutral",
                "text": text,
                "stash": stash,
            }),
        )
    }

    fn language(&self) -> &str {
        self.config.language.as_deref().unwrap_or(DETECTED_LANGUAGE)
    }

    /// An `error` event (`error.type`, `code`, `message`, `param`, `event_id`: the client
    /// event that caused it). The session continues.
    fn error(
        &self,
        out: &mut Vec<Reply>,
        code: &str,
        message: String,
        param: Option<&str>,
        event_id: Option<&str>,
    ) {
        out.push(error_event(
            "invalid_request_error",
            code,
            &message,
            param,
            event_id,
        ));
    }

    fn end(&mut self, out: &mut Vec<Reply>, code: u16, reason: &str) {
        self.ended = true;
        out.push(Reply::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    /// A server event: `event_id`, `type`, then `fields`.
    fn event(&self, event_type: &str, fields: Value) -> Reply {
        debug!("emulator {}: -> {event_type}", self.id);
        server_event(event_type, fields)
    }
}

/// A server event frame: a fresh `event_id`, `type`, then the fields of `fields` (an object).
/// Written by hand so that `event_id` and `type` come first, as the service sends them
/// (serde_json's map would sort the keys).
pub(crate) fn server_event(event_type: &str, fields: Value) -> Reply {
    let mut text = format!(
        "{{\"event_id\":\"{}\",\"type\":{}",
        new_id("event_"),
        Value::from(event_type)
    );
    if let Value::Object(fields) = fields {
        if !fields.is_empty() {
            let rest = Value::Object(fields).to_string();
            text.push(',');
            // Inside the braces of a non-empty object.
            text.push_str(&rest[1..rest.len() - 1]);
        }
    }
    text.push('}');
    Reply::Send(text)
}

/// An `error` event frame.
pub(crate) fn error_event(
    error_type: &str,
    code: &str,
    message: &str,
    param: Option<&str>,
    event_id: Option<&str>,
) -> Reply {
    server_event(
        "error",
        json!({ "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        }}),
    )
}

/// A field that is present and not null.
fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|v| !v.is_null())
}
