//! Events: what the server sends (typed, with the raw JSON kept), what the library itself
//! raises (`client.*`), and the client events we write on the wire.
//!
//! Server events are the service's documented ones (`session.*`, `input_audio_buffer.*`,
//! `conversation.item.*`, `error`). Every field the service controls is optional here:
//! the docs and live captures disagree on which are always present, and a missing field must
//! not cost the caller the event.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// One event from the conversation, in arrival order.
///
/// Server events keep the exact text of the frame they came from ([`Event::raw`]); events the
/// library raises itself have a `type` starting with `client.` and no raw text.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    raw: Option<String>,
    /// The event's offsets on the device timeline, in ms (see [`Event::device_start_ms`]).
    device_start_ms: Option<u64>,
    device_end_ms: Option<u64>,
}

/// The typed content of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// `session.created`: the first event of every connection.
    SessionCreated(Session),
    /// `session.updated`: the reply to `session.update`.
    SessionUpdated(Session),
    /// `input_audio_buffer.speech_started` (VAD mode).
    SpeechStarted {
        /// The item this utterance will become.
        item_id: Option<String>,
        /// Milliseconds of session audio before speech was detected.
        audio_start_ms: Option<u64>,
    },
    /// `input_audio_buffer.speech_stopped` (VAD mode).
    SpeechStopped {
        /// The utterance's item.
        item_id: Option<String>,
        /// Milliseconds of session audio at the end of speech.
        audio_end_ms: Option<u64>,
    },
    /// `input_audio_buffer.committed`: an utterance's audio is closed.
    Committed {
        /// The new item.
        item_id: Option<String>,
        /// The item before it, if any.
        previous_item_id: Option<String>,
    },
    /// `conversation.item.created`.
    ItemCreated {
        /// The new item (`item.id`).
        item_id: Option<String>,
        /// The item before it, if any.
        previous_item_id: Option<String>,
    },
    /// `conversation.item.input_audio_transcription.text`: a partial result. Each one replaces
    /// the previous one for its item; it is not a delta.
    Partial(Partial),
    /// `conversation.item.input_audio_transcription.completed`: an item's final transcript.
    Completed(Completed),
    /// `conversation.item.input_audio_transcription.failed`.
    Failed(Failed),
    /// `session.finished`: everything after `session.finish` has been delivered.
    SessionFinished,
    /// `error` from the server.
    Error(ServerError),
    /// A well-formed event of a type this library does not know; see [`Event::raw`].
    Unknown {
        /// Its `type` field (empty if it had none).
        event_type: String,
    },
    /// `client.malformed`: a text frame that is not a valid event (bad JSON, wrong field
    /// types). Its text is in [`Event::raw`].
    Malformed {
        /// What was wrong with it.
        reason: String,
    },
    /// `client.binary`: the server sent a binary frame (the protocol has none).
    Binary {
        /// Its length in bytes.
        len: usize,
    },
    /// `client.closed`: the connection ended. Always the last event of a conversation.
    Closed {
        /// The close code (1006 when the socket ended without a close frame).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// `client.audio_dropped`: audio that was handed over will never reach the server.
    AudioDropped {
        /// How much audio, in milliseconds.
        ms: u64,
        /// Why.
        reason: String,
    },
    /// `client.capture_overrun`: the capture device overran and was recovered.
    CaptureOverrun {
        /// Overruns so far in this capture.
        count: u64,
        /// The estimated gap in the audio, in milliseconds.
        gap_ms: u64,
    },
    /// `client.capture_error`: capture ended with an error; the conversation stays usable.
    CaptureError {
        /// What failed, naming the device and the ALSA call.
        message: String,
    },
    /// `client.reconnected`: the link died and a new session took over, with the audio
    /// whose result had not come back replayed.
    Reconnected {
        /// Which attempt of this outage succeeded (1-based).
        attempt: u32,
        /// The session that was lost.
        old_session_id: Option<String>,
        /// The new session.
        new_session_id: Option<String>,
        /// Audio sent again, in milliseconds.
        replayed_ms: u64,
        /// The close code with which the previous connection ended (1006 when it ended
        /// without a close frame: a reset, a dead peer, a failed write).
        code: u16,
        /// Why the previous connection ended: the peer's close reason or the error.
        reason: String,
    },
    /// `client.link_behind`: the link carries the audio away slower than real time. Raised
    /// when the audio that is late (handed over, not yet left this device — queued, in the
    /// socket's buffers or the kernel's send queue — and older than the real-time pace of
    /// the stream) first passes
    /// [`ConnectParams::behind_threshold`](crate::ConnectParams::behind_threshold), then
    /// each time it doubles. A file sent faster than real time is never behind.
    LinkBehind {
        /// How far behind real time the link is, in milliseconds of audio.
        behind_ms: u64,
    },
    /// `client.gate_opened` (feature `gate`): the speech gate opened; what follows is sent,
    /// starting with the pre-roll.
    GateOpened {
        /// The first sample sent, in ms on the device timeline (since the first sample given
        /// to the gate).
        at_ms: u64,
        /// Where the speech began, after the pre-roll, likewise.
        speech_at_ms: u64,
    },
    /// `client.gate_closed` (feature `gate`): the hangover ran out; nothing is sent until the
    /// next `client.gate_opened`.
    GateClosed {
        /// Just after the last sample sent, on the device timeline.
        at_ms: u64,
        /// Where the speech ended (the hangover lies between).
        speech_end_ms: u64,
    },
    /// `client.link_caught_up`: after a [`EventKind::LinkBehind`], the link fell back to
    /// less than a quarter of the threshold behind.
    LinkCaughtUp {
        /// The largest backlog seen while behind, in milliseconds.
        max_behind_ms: u64,
    },
    /// `client.session_idle_closed`: the session ended while nobody spoke (the gate's idle
    /// timeout, or the server closing an idle session). Every sent audio had its result; no
    /// audio is lost. Nothing is connected until audio (or a commit, or an update) needs the
    /// service again, which opens a new session ([`EventKind::SessionReopened`]).
    SessionIdleClosed {
        /// The session that ended.
        session_id: Option<String>,
        /// How long the gate had been closed, in ms of audio, when it asked for the end;
        /// `None` when the server ended it.
        idle_ms: Option<u64>,
        /// True if the server closed it (the gate was closed and every result was in).
        by_server: bool,
        /// The close code (1000 for the library's own close).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// `client.session_reopened`: after a [`EventKind::SessionIdleClosed`], a new session
    /// was opened (configured as the last one) for the audio that needs it; what was queued
    /// meanwhile follows as fast as the socket takes it.
    SessionReopened {
        /// The new session.
        session_id: Option<String>,
        /// From the first attempt to the new session configured, in wall-clock ms.
        connect_ms: u64,
        /// Attempts it took (1-based; retries follow the reconnect policy).
        attempts: u32,
    },
    /// `client.reconnect_failed`: the link died and could not be restored; `client.closed`
    /// follows.
    ReconnectFailed {
        /// Attempts made in this outage.
        attempts: u32,
        /// Why the last one failed.
        error: String,
    },
}

/// The `session` object of `session.created` / `session.updated`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[non_exhaustive]
pub struct Session {
    /// The session id (`sess_…`).
    #[serde(default)]
    pub id: Option<String>,
    /// The model actually serving this session.
    #[serde(default)]
    pub model: Option<String>,
    /// The input audio format the server applies.
    #[serde(default)]
    pub input_audio_format: Option<String>,
    /// The sample rate the server applies.
    #[serde(default)]
    pub sample_rate: Option<u32>,
}

/// A partial transcript (`…transcription.text`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[non_exhaustive]
pub struct Partial {
    /// The item.
    #[serde(default)]
    pub item_id: Option<String>,
    /// The confirmed prefix: the model will not change it any more.
    #[serde(default)]
    pub text: String,
    /// The provisional suffix after `text`, still subject to revision.
    #[serde(default)]
    pub stash: String,
    /// The language, if reported.
    #[serde(default)]
    pub language: Option<String>,
    /// The emotion, if reported.
    #[serde(default)]
    pub emotion: Option<String>,
}

impl Partial {
    /// The live preview: `text` followed by `stash`.
    pub fn preview(&self) -> String {
        let mut s = String::with_capacity(self.text.len() + self.stash.len());
        s.push_str(&self.text);
        s.push_str(&self.stash);
        s
    }
}

/// A final transcript (`…transcription.completed`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[non_exhaustive]
pub struct Completed {
    /// The item.
    #[serde(default)]
    pub item_id: Option<String>,
    /// The final text.
    #[serde(default)]
    pub transcript: String,
    /// The detected (or requested) language.
    #[serde(default)]
    pub language: Option<String>,
    /// One of surprised, neutral, happy, sad, disgusted, angry, fearful.
    #[serde(default)]
    pub emotion: Option<String>,
    /// Usage, when the server reports it (undocumented; `duration` is cumulative seconds).
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// The `usage` object seen on `completed` events.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Audio seconds billed so far in this session.
    #[serde(default)]
    pub duration: Option<f64>,
}

/// A failed item (`…transcription.failed`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[non_exhaustive]
pub struct Failed {
    /// The item.
    #[serde(default)]
    pub item_id: Option<String>,
    /// The error.
    #[serde(default)]
    pub error: ServerError,
}

/// The `error` object of an `error` event (all fields optional in practice).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[non_exhaustive]
pub struct ServerError {
    /// For example `invalid_request_error`.
    #[serde(default, rename = "type")]
    pub error_type: Option<String>,
    /// For example `invalid_value`.
    #[serde(default)]
    pub code: Option<String>,
    /// A human-readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// The offending parameter.
    #[serde(default)]
    pub param: Option<String>,
    /// The client event that caused it.
    #[serde(default)]
    pub event_id: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (label, v) in [
            ("type", &self.error_type),
            ("code", &self.code),
            ("param", &self.param),
        ] {
            if let Some(v) = v {
                write!(f, "{sep}{label} {v}")?;
                sep = ", ";
            }
        }
        // An empty message counts as none: the text must never be empty.
        if let Some(m) = self.message.as_deref().filter(|m| !m.is_empty()) {
            write!(f, "{sep}{m}")?;
        } else if sep.is_empty() {
            write!(f, "(no details)")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Ids {
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    previous_item_id: Option<String>,
    #[serde(default)]
    audio_start_ms: Option<u64>,
    #[serde(default)]
    audio_end_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ItemCreated {
    #[serde(default)]
    previous_item_id: Option<String>,
    #[serde(default)]
    item: Option<ItemRef>,
}

#[derive(Deserialize)]
struct ItemRef {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct WithSession {
    #[serde(default)]
    session: Session,
}

#[derive(Deserialize)]
struct WithError {
    #[serde(default)]
    error: ServerError,
}

impl Event {
    /// Parses one text frame from the server. Never fails: a frame that is not a valid event
    /// becomes [`EventKind::Malformed`] with its text kept.
    pub fn parse(text: String) -> Event {
        // A first pass reads only the type, a second goes straight into the typed struct: no
        // JSON tree is built, which was most of the cost of receiving an event. A frame that
        // fails the first pass takes the tree, whose messages say what is wrong with it.
        // (serde takes a JSON array for a struct too: only an object may take the fast path.)
        let object = text.trim_start().starts_with('{');
        let fast = object.then(|| serde_json::from_str::<TypeOnly>(&text));
        let kind = match fast {
            Some(Ok(TypeOnly { ty: Some(ty) })) => kind_of(&ty, Source::Text(&text)),
            _ => match serde_json::from_str::<Value>(&text) {
                Ok(v) => match v.get("type").and_then(Value::as_str).map(str::to_owned) {
                    Some(ty) => kind_of(&ty, Source::Tree(v)),
                    None => EventKind::Malformed {
                        reason: "no string field \"type\"".into(),
                    },
                },
                Err(e) => EventKind::Malformed {
                    reason: format!("invalid JSON: {e}"),
                },
            },
        };
        Event {
            kind,
            raw: Some(text),
            device_start_ms: None,
            device_end_ms: None,
        }
    }

    /// An event the library raises itself.
    pub fn client(kind: EventKind) -> Event {
        Event {
            kind,
            raw: None,
            device_start_ms: None,
            device_end_ms: None,
        }
    }

    /// Where the event's `audio_start_ms` lies on the device timeline: ms since the first
    /// sample appended (or given to the speech gate), counted across gate closes, idle
    /// session rollovers and reconnects, where the service's own offsets restart or skip
    /// the audio never sent. `None` when the event has no start offset, or the offset is
    /// past the audio sent, or older than the stretches remembered.
    pub fn device_start_ms(&self) -> Option<u64> {
        self.device_start_ms
    }

    /// Where the event's `audio_end_ms` lies on the device timeline (see
    /// [`device_start_ms`](Self::device_start_ms)).
    pub fn device_end_ms(&self) -> Option<u64> {
        self.device_end_ms
    }

    /// The session offsets this event carries, in ms: (`audio_start_ms`, `audio_end_ms`).
    pub(crate) fn session_offsets_ms(&self) -> (Option<u64>, Option<u64>) {
        match &self.kind {
            EventKind::SpeechStarted { audio_start_ms, .. } => (*audio_start_ms, None),
            EventKind::SpeechStopped { audio_end_ms, .. } => (None, *audio_end_ms),
            _ => (None, None),
        }
    }

    /// Sets the device-timeline positions (by the I/O thread, which knows the mapping).
    pub(crate) fn set_device_ms(&mut self, start: Option<u64>, end: Option<u64>) {
        self.device_start_ms = start;
        self.device_end_ms = end;
    }

    /// The exact text of the server frame this event came from (also for
    /// [`EventKind::Malformed`]); `None` for events the library raised.
    pub fn raw(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// The event's wire `type`, or `client.…` for events the library raised.
    pub fn type_name(&self) -> &str {
        match &self.kind {
            EventKind::SessionCreated(_) => "session.created",
            EventKind::SessionUpdated(_) => "session.updated",
            EventKind::SpeechStarted { .. } => "input_audio_buffer.speech_started",
            EventKind::SpeechStopped { .. } => "input_audio_buffer.speech_stopped",
            EventKind::Committed { .. } => "input_audio_buffer.committed",
            EventKind::ItemCreated { .. } => "conversation.item.created",
            EventKind::Partial(_) => "conversation.item.input_audio_transcription.text",
            EventKind::Completed(_) => "conversation.item.input_audio_transcription.completed",
            EventKind::Failed(_) => "conversation.item.input_audio_transcription.failed",
            EventKind::SessionFinished => "session.finished",
            EventKind::Error(_) => "error",
            EventKind::Unknown { event_type } => event_type,
            EventKind::Malformed { .. } => "client.malformed",
            EventKind::Binary { .. } => "client.binary",
            EventKind::Closed { .. } => "client.closed",
            EventKind::AudioDropped { .. } => "client.audio_dropped",
            EventKind::CaptureOverrun { .. } => "client.capture_overrun",
            EventKind::CaptureError { .. } => "client.capture_error",
            EventKind::Reconnected { .. } => "client.reconnected",
            EventKind::LinkBehind { .. } => "client.link_behind",
            EventKind::GateOpened { .. } => "client.gate_opened",
            EventKind::GateClosed { .. } => "client.gate_closed",
            EventKind::LinkCaughtUp { .. } => "client.link_caught_up",
            EventKind::SessionIdleClosed { .. } => "client.session_idle_closed",
            EventKind::SessionReopened { .. } => "client.session_reopened",
            EventKind::ReconnectFailed { .. } => "client.reconnect_failed",
        }
    }

    /// True for events the library raised itself (`client.…`), including malformed frames.
    pub fn is_client(&self) -> bool {
        self.type_name().starts_with("client.")
    }

    /// One line of JSON: a server event exactly as received, or a `client.…` object for the
    /// library's own events (a malformed frame's text goes in its `text` field).
    /// A server event carrying offsets gets their device-timeline positions too, as
    /// `device_audio_start_ms` / `device_audio_end_ms`.
    pub fn to_json_line(&self) -> String {
        if let (Some(raw), false) = (&self.raw, self.is_client()) {
            return self.with_device_fields(raw);
        }
        let mut o = serde_json::Map::new();
        o.insert("type".into(), self.type_name().into());
        match &self.kind {
            EventKind::Malformed { reason } => {
                o.insert("reason".into(), reason.as_str().into());
                o.insert("text".into(), self.raw.as_deref().unwrap_or("").into());
            }
            EventKind::Binary { len } => {
                o.insert("len".into(), (*len).into());
            }
            EventKind::Closed { code, reason } => {
                o.insert("code".into(), (*code).into());
                o.insert("reason".into(), reason.as_str().into());
            }
            EventKind::AudioDropped { ms, reason } => {
                o.insert("ms".into(), (*ms).into());
                o.insert("reason".into(), reason.as_str().into());
            }
            EventKind::CaptureOverrun { count, gap_ms } => {
                o.insert("count".into(), (*count).into());
                o.insert("gap_ms".into(), (*gap_ms).into());
            }
            EventKind::CaptureError { message } => {
                o.insert("message".into(), message.as_str().into());
            }
            EventKind::Reconnected {
                attempt,
                old_session_id,
                new_session_id,
                replayed_ms,
                code,
                reason,
            } => {
                o.insert("attempt".into(), (*attempt).into());
                o.insert("old_session_id".into(), old_session_id.clone().into());
                o.insert("new_session_id".into(), new_session_id.clone().into());
                o.insert("replayed_ms".into(), (*replayed_ms).into());
                o.insert("code".into(), (*code).into());
                o.insert("reason".into(), reason.as_str().into());
            }
            EventKind::GateOpened {
                at_ms,
                speech_at_ms,
            } => {
                o.insert("at_ms".into(), (*at_ms).into());
                o.insert("speech_at_ms".into(), (*speech_at_ms).into());
            }
            EventKind::GateClosed {
                at_ms,
                speech_end_ms,
            } => {
                o.insert("at_ms".into(), (*at_ms).into());
                o.insert("speech_end_ms".into(), (*speech_end_ms).into());
            }
            EventKind::LinkBehind { behind_ms } => {
                o.insert("behind_ms".into(), (*behind_ms).into());
            }
            EventKind::LinkCaughtUp { max_behind_ms } => {
                o.insert("max_behind_ms".into(), (*max_behind_ms).into());
            }
            EventKind::SessionIdleClosed {
                session_id,
                idle_ms,
                by_server,
                code,
                reason,
            } => {
                o.insert("session_id".into(), session_id.clone().into());
                o.insert("idle_ms".into(), (*idle_ms).into());
                o.insert("by_server".into(), (*by_server).into());
                o.insert("code".into(), (*code).into());
                o.insert("reason".into(), reason.as_str().into());
            }
            EventKind::SessionReopened {
                session_id,
                connect_ms,
                attempts,
            } => {
                o.insert("session_id".into(), session_id.clone().into());
                o.insert("connect_ms".into(), (*connect_ms).into());
                o.insert("attempts".into(), (*attempts).into());
            }
            EventKind::ReconnectFailed { attempts, error } => {
                o.insert("attempts".into(), (*attempts).into());
                o.insert("error".into(), error.as_str().into());
            }
            _ => {}
        }
        Value::Object(o).to_string()
    }
}

impl Event {
    /// The server's text as received, or, when device positions are known, the same object
    /// with them added (the server's own fields untouched).
    fn with_device_fields(&self, raw: &str) -> String {
        if self.device_start_ms.is_none() && self.device_end_ms.is_none() {
            return raw.to_owned();
        }
        let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(raw) else {
            return raw.to_owned();
        };
        for (key, v) in [
            ("device_audio_start_ms", self.device_start_ms),
            ("device_audio_end_ms", self.device_end_ms),
        ] {
            if let Some(ms) = v {
                o.insert(key.into(), ms.into());
            }
        }
        Value::Object(o).to_string()
    }
}

/// The `type` of a server event, and nothing else.
#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
}

/// Where a typed event is read from: the frame's text, or a tree already parsed.
enum Source<'a> {
    Text(&'a str),
    Tree(Value),
}

impl Source<'_> {
    fn get<T: serde::de::DeserializeOwned>(self) -> serde_json::Result<T> {
        match self {
            // On failure, the tree decides, as before the fast path existed: it takes
            // duplicate keys (the last wins), and its messages name the field at fault.
            Source::Text(t) => serde_json::from_str(t).or_else(|e| {
                serde_json::from_str::<Value>(t)
                    .map_err(|_| e)
                    .and_then(serde_json::from_value)
            }),
            Source::Tree(v) => serde_json::from_value(v),
        }
    }
}

fn kind_of(event_type: &str, v: Source<'_>) -> EventKind {
    if event_type.starts_with("client.") {
        // The library's own namespace: a server frame must not pass for one of its events.
        return EventKind::Malformed {
            reason: format!("{event_type}: a server event in the client.… namespace"),
        };
    }
    let typed = match event_type {
        "session.created" => v
            .get::<WithSession>()
            .map(|w| EventKind::SessionCreated(w.session)),
        "session.updated" => v
            .get::<WithSession>()
            .map(|w| EventKind::SessionUpdated(w.session)),
        "input_audio_buffer.speech_started" => v.get::<Ids>().map(|i| EventKind::SpeechStarted {
            item_id: i.item_id,
            audio_start_ms: i.audio_start_ms,
        }),
        "input_audio_buffer.speech_stopped" => v.get::<Ids>().map(|i| EventKind::SpeechStopped {
            item_id: i.item_id,
            audio_end_ms: i.audio_end_ms,
        }),
        "input_audio_buffer.committed" => v.get::<Ids>().map(|i| EventKind::Committed {
            item_id: i.item_id,
            previous_item_id: i.previous_item_id,
        }),
        "conversation.item.created" => v.get::<ItemCreated>().map(|i| EventKind::ItemCreated {
            item_id: i.item.and_then(|it| it.id),
            previous_item_id: i.previous_item_id,
        }),
        "conversation.item.input_audio_transcription.text" => v.get().map(EventKind::Partial),
        "conversation.item.input_audio_transcription.completed" => {
            v.get().map(EventKind::Completed)
        }
        "conversation.item.input_audio_transcription.failed" => v.get().map(EventKind::Failed),
        "session.finished" => Ok(EventKind::SessionFinished),
        "error" => v.get::<WithError>().map(|w| EventKind::Error(w.error)),
        _ => {
            return EventKind::Unknown {
                event_type: event_type.to_owned(),
            }
        }
    };
    typed.unwrap_or_else(|e| EventKind::Malformed {
        reason: format!("{event_type}: {e}"),
    })
}

// ---- client events on the wire -------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    use crate::protocol::writers::base64_into;
    use crate::protocol::{
        commit_json, finish_json, new_event_id, write_append_json, AppendAudio,
        APPEND_OVERHEAD_BYTES,
    };

    #[test]
    fn base64_matches_the_standard_encoding_for_every_tail_length() {
        use base64::Engine as _;
        let bytes: Vec<u8> = (0..3203u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..64usize).chain(3190..3203) {
            let mut out = vec![MaybeUninit::new(b'?'); len.div_ceil(3) * 4];
            base64_into(&mut out, &bytes[..len]);
            // SAFETY: the vector was initialised (with '?') before base64_into wrote over it.
            let out: Vec<u8> = out
                .into_iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let expected = base64::engine::general_purpose::STANDARD.encode(&bytes[..len]);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{len} bytes");
        }
    }

    fn parse(s: &str) -> Event {
        Event::parse(s.to_owned())
    }

    // Every server event example of the service's documentation, verbatim.
    #[test]
    fn parses_the_documented_server_events() {
        let e = parse(
            r#"{"event_id":"event_B2uoU7VOt1AAITsPRPH9n","type":"error","error":{"type":"invalid_request_error","code":"invalid_value","message":"Invalid value: 'whisper-1xx'. Supported values are: 'whisper-1'.","param":"session.input_audio_transcription.model","event_id":"event_123"}}"#,
        );
        let EventKind::Error(err) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(err.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(err.code.as_deref(), Some("invalid_value"));
        assert_eq!(
            err.param.as_deref(),
            Some("session.input_audio_transcription.model")
        );
        assert_eq!(err.event_id.as_deref(), Some("event_123"));
        assert!(err.to_string().contains("Invalid value"));

        let e = parse(
            r#"{"event_id":"event_1234","type":"session.created","session":{"id":"sess_001","object":"realtime.session","model":"qwen3-asr-flash-realtime","modalities":["text"],"input_audio_format":"pcm16","input_audio_transcription":null,"turn_detection":{"type":"server_vad","threshold":0.5,"silence_duration_ms":200}}}"#,
        );
        let EventKind::SessionCreated(s) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(s.id.as_deref(), Some("sess_001"));
        assert_eq!(s.model.as_deref(), Some("qwen3-asr-flash-realtime"));
        assert_eq!(s.input_audio_format.as_deref(), Some("pcm16"));

        let e = parse(
            r#"{"event_id":"event_04cIDHwiM-gHSc0rSktQG","type":"session.created","session":{"id":"sess_WvWctgpr1Qpcjq53Spt0p","object":"realtime.session","model":"qwen3-asr-flash-realtime","modalities":["text"],"input_audio_format":"pcm","sample_rate":16000,"input_audio_transcription":{"model":"qwen3-asr-flash-realtime"},"turn_detection":{"type":"server_vad","threshold":0.2,"silence_duration_ms":800}}}"#,
        );
        let EventKind::SessionCreated(s) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(s.sample_rate, Some(16000));

        let e = parse(
            r#"{"event_id":"event_x","type":"session.updated","session":{"id":"sess_1","model":"qwen3-asr-flash-realtime","input_audio_format":"pcm","sample_rate":16000,"input_audio_transcription":{"model":"qwen3-asr-flash-realtime","language":"zh"},"turn_detection":null}}"#,
        );
        assert!(
            matches!(&e.kind, EventKind::SessionUpdated(s) if s.id.as_deref() == Some("sess_1"))
        );

        let e = parse(
            r#"{"event_id":"event_B1lV7FPbgTv9qGxPI1tH4","type":"input_audio_buffer.speech_started","audio_start_ms":64,"item_id":"item_B1lV7jWLscp4mMV8hSs8c"}"#,
        );
        assert_eq!(
            e.kind,
            EventKind::SpeechStarted {
                item_id: Some("item_B1lV7jWLscp4mMV8hSs8c".into()),
                audio_start_ms: Some(64)
            }
        );

        let e = parse(
            r#"{"event_id":"event_B3GGEYh2orwNIdhUagZPz","type":"input_audio_buffer.speech_stopped","audio_end_ms":28128,"item_id":"item_B3GGE8ry4yqbqJGzrVhEM"}"#,
        );
        assert_eq!(
            e.kind,
            EventKind::SpeechStopped {
                item_id: Some("item_B3GGE8ry4yqbqJGzrVhEM".into()),
                audio_end_ms: Some(28128)
            }
        );

        let e = parse(
            r#"{"event_id":"event_1121","type":"input_audio_buffer.committed","previous_item_id":"msg_001","item_id":"msg_002"}"#,
        );
        assert_eq!(
            e.kind,
            EventKind::Committed {
                item_id: Some("msg_002".into()),
                previous_item_id: Some("msg_001".into())
            }
        );

        let e = parse(
            r#"{"type":"conversation.item.created","event_id":"event_B3GGKbCfBZTpqFHZ0P8vg","previous_item_id":"item_B3GGE8ry4yqbqJGzrVhEM","item":{"id":"item_B3GGEPlolCqdMiVbYIf5L","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]}}"#,
        );
        assert_eq!(
            e.kind,
            EventKind::ItemCreated {
                item_id: Some("item_B3GGEPlolCqdMiVbYIf5L".into()),
                previous_item_id: Some("item_B3GGE8ry4yqbqJGzrVhEM".into())
            }
        );

        let e = parse(
            r#"{"event_id":"event_R7Pfu8QVBfP5HmpcbEFSd","type":"conversation.item.input_audio_transcription.text","item_id":"item_MpJQPNQzqVRc9aC9zMwSj","content_index":0,"language":"zh","emotion":"neutral","text":"","stash":"北京的"}"#,
        );
        let EventKind::Partial(p) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(
            (p.text.as_str(), p.stash.as_str(), p.preview().as_str()),
            ("", "北京的", "北京的")
        );
        assert_eq!(p.language.as_deref(), Some("zh"));

        let e = parse(
            r#"{"event_id":"event_B3GGEjPT2sLzjBM74W6kB","type":"conversation.item.input_audio_transcription.completed","item_id":"item_B3GGC53jGOuIFcjZkmEQ9","content_index":0,"language":"zh","emotion":"neutral","transcript":"今天天气怎么样"}"#,
        );
        let EventKind::Completed(c) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(c.transcript, "今天天气怎么样");
        assert_eq!(c.emotion.as_deref(), Some("neutral"));
        assert_eq!(c.usage, None);

        let e = parse(
            r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"i","transcript":"x","usage":{"duration":45}}"#,
        );
        assert!(
            matches!(&e.kind, EventKind::Completed(c) if c.usage.as_ref().and_then(|u| u.duration) == Some(45.0))
        );

        let e = parse(
            r#"{"type":"conversation.item.input_audio_transcription.failed","item_id":"<item_id>","content_index":0,"error":{"code":"<code>","message":"<message>","param":"<param>"}}"#,
        );
        let EventKind::Failed(f) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(f.item_id.as_deref(), Some("<item_id>"));
        assert_eq!(f.error.code.as_deref(), Some("<code>"));

        let e = parse(r#"{"event_id":"event_2239","type":"session.finished"}"#);
        assert_eq!(e.kind, EventKind::SessionFinished);
        // The raw text is kept, exactly.
        assert_eq!(
            e.raw(),
            Some(r#"{"event_id":"event_2239","type":"session.finished"}"#)
        );
        assert_eq!(
            e.to_json_line(),
            r#"{"event_id":"event_2239","type":"session.finished"}"#
        );
    }

    #[test]
    fn partials_replace_rather_than_append() {
        // The SE walk-through: each snapshot's preview is complete on its own.
        let steps = [
            ("", "今天"),
            ("", "今天天气"),
            ("今天", "天气不错"),
            ("今天天气不错，", ""),
            ("今天天气不错，", "阳光明媚。"),
        ];
        let mut shown = String::new();
        for (text, stash) in steps {
            let e = parse(&format!(
                r#"{{"type":"conversation.item.input_audio_transcription.text","item_id":"i","text":"{text}","stash":"{stash}"}}"#
            ));
            let EventKind::Partial(p) = e.kind else {
                panic!()
            };
            shown = p.preview();
        }
        assert_eq!(shown, "今天天气不错，阳光明媚。");
    }

    #[test]
    fn what_is_not_an_event_is_kept_and_typed_client_side() {
        for bad in [
            "{not json",
            "[1,2]",
            r#"{"type":7}"#,
            "",
            &"[".repeat(10_000),
        ] {
            let e = parse(bad);
            assert!(
                matches!(e.kind, EventKind::Malformed { .. }),
                "{bad:.20}: {e:?}"
            );
            assert_eq!(e.raw(), Some(bad));
            let line: Value = serde_json::from_str(&e.to_json_line()).unwrap();
            assert_eq!(line["type"], "client.malformed");
            assert_eq!(line["text"], bad);
        }
        // Known type, wrong field type.
        let e = parse(r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":-5}"#);
        assert!(
            matches!(&e.kind, EventKind::Malformed { reason } if reason.contains("speech_started"))
        );
        // Huge numbers do not panic.
        let e = parse(r#"{"type":"input_audio_buffer.speech_stopped","audio_end_ms":1e400}"#);
        assert!(matches!(e.kind, EventKind::Malformed { .. }));
        // Unknown types are forwarded with their raw text.
        let e = parse(r#"{"type":"response.created","response":{"id":"r"}}"#);
        assert_eq!(
            e.kind,
            EventKind::Unknown {
                event_type: "response.created".into()
            }
        );
        assert_eq!(e.type_name(), "response.created");
        assert!(!e.is_client());
    }

    #[test]
    fn client_events_have_the_sdk_shape() {
        let id = new_event_id();
        assert_eq!(id.len(), 38);
        assert!(id.starts_with("event_"));
        assert!(id[6..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(new_event_id(), new_event_id());

        let (commit, id) = commit_json();
        assert!(commit.contains(&id));
        let commit: Value = serde_json::from_str(&commit).unwrap();
        assert_eq!(commit.as_object().unwrap().len(), 2);
        assert_eq!(commit["type"], "input_audio_buffer.commit");
        let finish: Value = serde_json::from_str(&finish_json().0).unwrap();
        assert_eq!(finish["type"], "session.finish");
        assert_eq!(finish["event_id"].as_str().unwrap().len(), 38);

        let mut frame = String::new();
        write_append_json(&mut frame, &[1, 0, 255, 127]);
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "input_audio_buffer.append");
        assert_eq!(v["audio"], "AQD/fw==");
        assert_eq!(frame.len(), APPEND_OVERHEAD_BYTES + 8);
        // The padding carries no audio: "AQD/fw==" is four bytes, "AQD/" three.
        assert_eq!(AppendAudio::Base64("AQD/fw==").audio_bytes(), 4);
        assert_eq!(AppendAudio::Base64("AQD/").audio_bytes(), 3);
        assert_eq!(AppendAudio::Pcm(&[1, 0, 255, 127]).audio_bytes(), 4);
        let exact = format!(
            r#"{{"event_id":"{}","type":"input_audio_buffer.append","audio":"AQD/fw=="}}"#,
            v["event_id"].as_str().unwrap()
        );
        assert_eq!(frame, exact);
    }

    #[test]
    fn device_positions_are_added_to_the_servers_json_and_the_rollover_events_serialise() {
        let mut e = parse(
            r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":64,"item_id":"i"}"#,
        );
        assert_eq!(e.session_offsets_ms(), (Some(64), None));
        let untouched = e.to_json_line();
        e.set_device_ms(Some(20_064), None);
        assert_eq!(e.device_start_ms(), Some(20_064));
        let v: Value = serde_json::from_str(&e.to_json_line()).unwrap();
        assert_eq!(v["device_audio_start_ms"], 20_064);
        assert_eq!(v["audio_start_ms"], 64);
        assert!(v.get("device_audio_end_ms").is_none());
        assert!(!untouched.contains("device_"));
        let idle = Event::client(EventKind::SessionIdleClosed {
            session_id: Some("sess_a".into()),
            idle_ms: Some(30_000),
            by_server: false,
            code: 1000,
            reason: "idle".into(),
        });
        let v: Value = serde_json::from_str(&idle.to_json_line()).unwrap();
        assert_eq!(v["type"], "client.session_idle_closed");
        assert_eq!(v["idle_ms"], 30_000);
        let reopened = Event::client(EventKind::SessionReopened {
            session_id: Some("sess_b".into()),
            connect_ms: 12,
            attempts: 1,
        });
        let v: Value = serde_json::from_str(&reopened.to_json_line()).unwrap();
        assert_eq!(v["type"], "client.session_reopened");
        assert_eq!(v["connect_ms"], 12);
    }

    #[test]
    fn client_raised_events_serialise_with_client_types() {
        let e = Event::client(EventKind::Closed {
            code: 1011,
            reason: "gone".into(),
        });
        assert_eq!(
            e.to_json_line(),
            r#"{"code":1011,"reason":"gone","type":"client.closed"}"#
        );
        let e = Event::client(EventKind::AudioDropped {
            ms: 300,
            reason: "r".into(),
        });
        assert!(e
            .to_json_line()
            .contains(r#""type":"client.audio_dropped""#));
        assert!(e.is_client());
    }
}
