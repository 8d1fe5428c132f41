//! The checks behind the fuzz targets, shared with `tests/fuzz_smoke.rs` (which includes this
//! file with `#[path]`, so it must only use `qwen_asr_realtime`, `serde_json` and std). It lives
//! here, not in fuzz/, so that the published package holds what its tests include.
//!
//! Each check panics when the library panics or breaks an invariant; nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use qwen_asr_realtime::audio::wav::{self, WavError, WavReader};
use qwen_asr_realtime::{Event, EventKind};
use serde_json::Value;

// ---- allocation tracking ------------------------------------------------------------------

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator that records the largest single allocation of each thread, so a check
/// can assert that nothing allocates according to a size read from its input. Install it with
/// `#[global_allocator]`; without it the limits below are never hit.
pub struct TrackingAlloc;

fn note(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|m| {
        if size > m.get() {
            m.set(size);
        }
    });
}

// SAFETY: forwards to the system allocator; the bookkeeping is a const-initialised
// thread-local `Cell<usize>`, which neither allocates nor has a destructor.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn reset_largest_alloc() {
    LARGEST_ALLOC.with(|m| m.set(0));
}

fn largest_alloc() -> usize {
    LARGEST_ALLOC.with(Cell::get)
}

// ---- server events ------------------------------------------------------------------------

/// The input, lossily decoded, as a server text frame.
pub fn check_event_bytes(data: &[u8]) {
    check_event_text(String::from_utf8_lossy(data).into_owned());
}

/// A JSON event built from the input (see [`event_json`]).
pub fn check_event_structured(data: &[u8]) {
    check_event_text(event_json(data));
}

/// `Event::parse` and everything callable on its result, with the invariants:
/// - `raw()` is the input;
/// - a parsed frame is a client (`client.…`) event exactly when it is `Malformed`, and then
///   `to_json_line()` is valid JSON carrying the input in `text`;
/// - otherwise the input was a JSON object whose `type` string is `type_name()` (values
///   that serde_json's `Value` cannot hold may sit in fields the event does not read), and
///   `to_json_line()` is the input;
/// - typed fields match the JSON they came from;
/// - no single allocation is far larger than the input.
pub fn check_event_text(text: String) {
    let json = serde_json::from_str::<Value>(&text).ok();
    let json_type = json
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    let limit = 16 * text.len() + (64 << 10);
    reset_largest_alloc();
    let e = Event::parse(text.clone());
    assert_eq!(e.raw(), Some(text.as_str()), "raw() is not the input");
    let name = e.type_name().to_owned();
    let line = e.to_json_line();
    let malformed = matches!(e.kind, EventKind::Malformed { .. });
    assert_eq!(
        e.is_client(),
        name.starts_with("client."),
        "is_client() disagrees with type_name() {name:?}"
    );
    assert_eq!(
        e.is_client(),
        malformed,
        "a server frame parsed as the client event {name:?}: {text:?}"
    );
    if malformed {
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("to_json_line() is not JSON ({err}): {line:?}"));
        assert_eq!(v["type"], "client.malformed");
        assert_eq!(v["text"].as_str(), Some(text.as_str()));
        assert!(v["reason"].is_string());
    } else {
        assert_eq!(
            line, text,
            "to_json_line() of a server event is not its text"
        );
        if json.is_some() {
            assert_eq!(
                json_type,
                Some(name.as_str()),
                "type_name() is not the frame's type: {text:?}"
            );
        } else {
            // serde_json's Value cannot hold some valid JSON (1e400, nesting past 128) that
            // the parser skips over in fields it does not read; the frame is still an object
            // of this type.
            assert!(
                text.trim_start().starts_with('{')
                    && serde_json::to_string(&name).is_ok_and(|quoted| text.contains(&quoted)),
                "parsed as {name:?}, yet not an object of that type: {text:?}"
            );
        }
    }
    if json.is_some() && json_type.is_none() {
        assert!(malformed, "no string type, yet parsed as {name:?}");
    }
    if let Some(v) = &json {
        check_typed_fields(&e.kind, v);
    }
    match &e.kind {
        EventKind::Partial(p) => assert_eq!(p.preview(), format!("{}{}", p.text, p.stash)),
        EventKind::Error(err) => assert!(!err.to_string().is_empty()),
        EventKind::Failed(f) => assert!(!f.error.to_string().is_empty()),
        _ => {}
    }
    assert!(!format!("{e:?}").is_empty());
    assert_eq!(e.clone(), e);
    let largest = largest_alloc();
    assert!(
        largest <= limit,
        "an allocation of {largest} bytes for a {}-byte frame",
        text.len()
    );
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The object under `key` (`Null` when absent), or `None` for an array: serde's derived
/// `Deserialize` also takes a struct from a sequence, field by field in order (`"session":
/// ["sess_1"]` gives `id: Some("sess_1")`), which this check does not model.
fn nested<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let n = &v[key];
    (!n.is_array()).then_some(n)
}

fn check_typed_fields(kind: &EventKind, v: &Value) {
    match kind {
        EventKind::SessionCreated(s) | EventKind::SessionUpdated(s) => {
            let Some(sv) = nested(v, "session") else {
                return;
            };
            assert_eq!(s.id.as_deref(), str_field(sv, "id"));
            assert_eq!(s.model.as_deref(), str_field(sv, "model"));
            assert_eq!(
                s.sample_rate.map(u64::from),
                sv.get("sample_rate").and_then(Value::as_u64)
            );
        }
        EventKind::SpeechStarted {
            item_id,
            audio_start_ms,
        } => {
            assert_eq!(item_id.as_deref(), str_field(v, "item_id"));
            assert_eq!(
                *audio_start_ms,
                v.get("audio_start_ms").and_then(Value::as_u64)
            );
        }
        EventKind::SpeechStopped {
            item_id,
            audio_end_ms,
        } => {
            assert_eq!(item_id.as_deref(), str_field(v, "item_id"));
            assert_eq!(*audio_end_ms, v.get("audio_end_ms").and_then(Value::as_u64));
        }
        EventKind::Committed {
            item_id,
            previous_item_id,
        } => {
            assert_eq!(item_id.as_deref(), str_field(v, "item_id"));
            assert_eq!(
                previous_item_id.as_deref(),
                str_field(v, "previous_item_id")
            );
        }
        EventKind::ItemCreated {
            item_id,
            previous_item_id,
        } => {
            if let Some(item) = nested(v, "item") {
                assert_eq!(item_id.as_deref(), str_field(item, "id"));
            }
            assert_eq!(
                previous_item_id.as_deref(),
                str_field(v, "previous_item_id")
            );
        }
        EventKind::Partial(p) => {
            assert_eq!(p.text, str_field(v, "text").unwrap_or(""));
            assert_eq!(p.stash, str_field(v, "stash").unwrap_or(""));
            assert_eq!(p.item_id.as_deref(), str_field(v, "item_id"));
        }
        EventKind::Completed(c) => {
            assert_eq!(c.transcript, str_field(v, "transcript").unwrap_or(""));
            assert_eq!(c.language.as_deref(), str_field(v, "language"));
        }
        EventKind::Failed(f) => {
            assert_eq!(f.item_id.as_deref(), str_field(v, "item_id"));
            if let Some(ev) = nested(v, "error") {
                assert_eq!(f.error.code.as_deref(), str_field(ev, "code"));
            }
        }
        EventKind::Error(err) => {
            if let Some(ev) = nested(v, "error") {
                assert_eq!(err.message.as_deref(), str_field(ev, "message"));
                assert_eq!(err.error_type.as_deref(), str_field(ev, "type"));
            }
        }
        EventKind::Unknown { event_type } => {
            assert_eq!(Some(event_type.as_str()), str_field(v, "type"));
        }
        _ => {}
    }
}

/// Reads choices from fuzz bytes; zeros once they run out, so generation always ends. Choice 0
/// is always the plain, valid one, so an exhausted or zero-filled input makes a valid event.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            usize::from(self.byte()) % n
        }
    }
    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.below(from.len())]
    }
    /// A JSON string literal of up to 15 input bytes, lossily decoded.
    fn string(&mut self) -> String {
        let len = self.below(16);
        let start = self.at.min(self.data.len());
        let end = (start + len).min(self.data.len());
        self.at += len;
        serde_json::to_string(&String::from_utf8_lossy(&self.data[start..end])).unwrap()
    }
}

/// Every `type` the parser knows, the client namespace, and near misses.
pub const EVENT_TYPES: &[&str] = &[
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.created",
    "conversation.item.input_audio_transcription.text",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "session.finished",
    "error",
    "client.malformed",
    "client.closed",
    "client.binary",
    "client.audio_dropped",
    "response.created",
    "session.update",
    "input_audio_buffer.append",
    "",
    "Error",
    "session.created ",
];

const KEYS: &[&str] = &[
    "event_id",
    "type",
    "session",
    "item_id",
    "previous_item_id",
    "audio_start_ms",
    "audio_end_ms",
    "item",
    "content_index",
    "language",
    "emotion",
    "text",
    "stash",
    "transcript",
    "usage",
    "error",
];

const SESSION_KEYS: &[&str] = &[
    "id",
    "object",
    "model",
    "modalities",
    "input_audio_format",
    "sample_rate",
    "input_audio_transcription",
    "turn_detection",
];
const ERROR_KEYS: &[&str] = &["type", "code", "message", "param", "event_id"];
const ITEM_KEYS: &[&str] = &["id", "object", "type", "status", "role", "content"];
const USAGE_KEYS: &[&str] = &["duration"];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "64",
    "16000",
    "-1",
    "-0",
    "0.0",
    "1.5",
    "45",
    "65535",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1e400",
    "-1e400",
    "1e-400",
    "123456789012345678901234567890",
];

/// JSON string literals; serde_json rejects the last two (lone surrogates), so typed fields
/// pick from the others.
const STRINGS: &[&str] = &[
    r#""""#,
    r#""sess_001""#,
    r#""item_B1lV7jWLscp4mMV8hSs8c""#,
    r#""qwen3-asr-flash-realtime""#,
    r#""pcm""#,
    r#""zh""#,
    r#""neutral""#,
    r#""invalid_request_error""#,
    r#""北京的""#,
    r#""\u0000""#,
    r#""\uD83D\uDE00""#,
    r#""\"\\\/\b\f\n\r\t""#,
    r#""client.closed""#,
    r#""\ud800""#,
    r#""\udc00\ud800""#,
];
const VALID_STRINGS: &[&str] = STRINGS.split_at(STRINGS.len() - 2).0;

/// A JSON event from fuzz bytes: an object with (usually) a known `type` and known or random
/// fields, each usually of the right JSON type, sometimes any value (deep nesting, huge and
/// negative numbers, escapes, lone surrogates); now and then the text is broken afterwards.
pub fn event_json(data: &[u8]) -> String {
    let mut c = Choices { data, at: 0 };
    let damage = c.byte();
    let fields = c.below(9);
    let type_at = c.below(fields + 1);
    let mut out = String::from("{");
    for i in 0..=fields {
        if i == type_at {
            // 13: no type at all; 14: a random one; 15: any value.
            let choice = c.below(16);
            if choice != 13 {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str("\"type\":");
            }
            match choice {
                13 => {}
                14 => out.push_str(&c.string()),
                15 => value(&mut c, &mut out, 0),
                _ => {
                    let t = c.pick(EVENT_TYPES);
                    out.push_str(&serde_json::to_string(t).unwrap());
                }
            }
        }
        if i < fields {
            if out.len() > 1 {
                out.push(',');
            }
            let key = if c.below(8) == 7 {
                c.string()
            } else {
                serde_json::to_string(c.pick(KEYS)).unwrap()
            };
            out.push_str(&key);
            out.push(':');
            typed_value(&mut c, &mut out, key.trim_matches('"'), 0);
        }
    }
    out.push('}');
    match damage {
        248..=255 => {
            // Cut it short, at a character boundary.
            let mut cut = usize::from(c.byte()) * out.len() / 256;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
        244..=247 => out.push_str(&String::from_utf8_lossy(
            &data[c.at.min(data.len())..][..data.len().saturating_sub(c.at).min(8)],
        )),
        240..=243 => out = format!("[{out}]"),
        236..=239 => out = format!("  {out}\n"),
        _ => {}
    }
    out
}

const MAX_DEPTH: usize = 24;

/// A value of the type `key` has in the protocol (mostly), else any value.
fn typed_value(c: &mut Choices, out: &mut String, key: &str, depth: usize) {
    if c.below(8) == 7 || depth > MAX_DEPTH {
        return value(c, out, depth);
    }
    match key {
        "session" => object(c, out, SESSION_KEYS, depth),
        "error" => object(c, out, ERROR_KEYS, depth),
        "item" => object(c, out, ITEM_KEYS, depth),
        "usage" => object(c, out, USAGE_KEYS, depth),
        "audio_start_ms" | "audio_end_ms" | "content_index" | "sample_rate" | "duration" => {
            if c.below(4) != 3 {
                out.push_str(&c.byte().to_string());
            } else {
                out.push_str(c.pick(NUMBERS));
            }
        }
        "type" => out.push_str(&serde_json::to_string(c.pick(EVENT_TYPES)).unwrap()),
        _ => {
            if c.below(2) == 0 {
                out.push_str(&c.string());
            } else {
                out.push_str(c.pick(VALID_STRINGS));
            }
        }
    }
}

fn object(c: &mut Choices, out: &mut String, keys: &[&str], depth: usize) {
    out.push('{');
    for i in 0..c.below(6) {
        if i > 0 {
            out.push(',');
        }
        let key = c.pick(keys);
        out.push_str(&serde_json::to_string(key).unwrap());
        out.push(':');
        typed_value(c, out, key, depth + 1);
    }
    out.push('}');
}

/// Any JSON value.
fn value(c: &mut Choices, out: &mut String, depth: usize) {
    if depth > MAX_DEPTH {
        out.push_str("null");
        return;
    }
    match c.below(11) {
        0 => out.push_str("null"),
        1 => out.push_str(if c.below(2) == 0 { "true" } else { "false" }),
        2 => out.push_str(c.pick(NUMBERS)),
        3 => out.push_str(&c.byte().to_string()),
        4 => out.push_str(c.pick(STRINGS)),
        5 => out.push_str(&c.string()),
        6 => {
            out.push('[');
            for i in 0..c.below(5) {
                if i > 0 {
                    out.push(',');
                }
                value(c, out, depth + 1);
            }
            out.push(']');
        }
        7 => {
            let all: Vec<&str> = [KEYS, SESSION_KEYS, ERROR_KEYS, ITEM_KEYS, USAGE_KEYS].concat();
            object(c, out, &all, depth);
        }
        8 => {
            // Now and then nesting around serde_json's recursion limit (128), which is slow
            // to parse; mostly a few levels.
            let n = if c.below(4) == 3 {
                120 + c.below(16)
            } else {
                1 + c.below(8)
            };
            let mut closers = Vec::with_capacity(n);
            for _ in 0..n {
                if c.below(2) == 0 {
                    out.push('[');
                    closers.push(']');
                } else {
                    out.push_str("{\"a\":");
                    closers.push('}');
                }
            }
            out.push('1');
            out.extend(closers.iter().rev());
        }
        9 => object(c, out, SESSION_KEYS, depth),
        _ => object(c, out, ERROR_KEYS, depth),
    }
}

/// The service's documented server events and a few variations, as parser seeds.
pub const EVENT_SEEDS: &[(&str, &str)] = &[
    (
        "error",
        r#"{"event_id":"event_B2uoU7VOt1AAITsPRPH9n","type":"error","error":{"type":"invalid_request_error","code":"invalid_value","message":"Invalid value: 'whisper-1xx'. Supported values are: 'whisper-1'.","param":"session.input_audio_transcription.model","event_id":"event_123"}}"#,
    ),
    (
        "session_created",
        r#"{"event_id":"event_1234","type":"session.created","session":{"id":"sess_001","object":"realtime.session","model":"qwen3-asr-flash-realtime","modalities":["text"],"input_audio_format":"pcm16","input_audio_transcription":null,"turn_detection":{"type":"server_vad","threshold":0.5,"silence_duration_ms":200}}}"#,
    ),
    (
        "session_created_live",
        r#"{"event_id":"event_04cIDHwiM-gHSc0rSktQG","type":"session.created","session":{"id":"sess_WvWctgpr1Qpcjq53Spt0p","object":"realtime.session","model":"qwen3-asr-flash-realtime","modalities":["text"],"input_audio_format":"pcm","sample_rate":16000,"input_audio_transcription":{"model":"qwen3-asr-flash-realtime"},"turn_detection":{"type":"server_vad","threshold":0.2,"silence_duration_ms":800}}}"#,
    ),
    (
        "session_updated",
        r#"{"event_id":"event_x","type":"session.updated","session":{"id":"sess_1","model":"qwen3-asr-flash-realtime","input_audio_format":"pcm","sample_rate":16000,"input_audio_transcription":{"model":"qwen3-asr-flash-realtime","language":"zh"},"turn_detection":null}}"#,
    ),
    (
        "speech_started",
        r#"{"event_id":"event_B1lV7FPbgTv9qGxPI1tH4","type":"input_audio_buffer.speech_started","audio_start_ms":64,"item_id":"item_B1lV7jWLscp4mMV8hSs8c"}"#,
    ),
    (
        "speech_stopped",
        r#"{"event_id":"event_B3GGEYh2orwNIdhUagZPz","type":"input_audio_buffer.speech_stopped","audio_end_ms":28128,"item_id":"item_B3GGE8ry4yqbqJGzrVhEM"}"#,
    ),
    (
        "committed",
        r#"{"event_id":"event_1121","type":"input_audio_buffer.committed","previous_item_id":"msg_001","item_id":"msg_002"}"#,
    ),
    (
        "item_created",
        r#"{"type":"conversation.item.created","event_id":"event_B3GGKbCfBZTpqFHZ0P8vg","previous_item_id":"item_B3GGE8ry4yqbqJGzrVhEM","item":{"id":"item_B3GGEPlolCqdMiVbYIf5L","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]}}"#,
    ),
    (
        "partial",
        r#"{"event_id":"event_R7Pfu8QVBfP5HmpcbEFSd","type":"conversation.item.input_audio_transcription.text","item_id":"item_MpJQPNQzqVRc9aC9zMwSj","content_index":0,"language":"zh","emotion":"neutral","text":"","stash":"北京的"}"#,
    ),
    (
        "completed",
        r#"{"event_id":"event_B3GGEjPT2sLzjBM74W6kB","type":"conversation.item.input_audio_transcription.completed","item_id":"item_B3GGC53jGOuIFcjZkmEQ9","content_index":0,"language":"zh","emotion":"neutral","transcript":"今天天气怎么样"}"#,
    ),
    (
        "completed_usage",
        r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"i","transcript":"x","usage":{"duration":45}}"#,
    ),
    (
        "failed",
        r#"{"type":"conversation.item.input_audio_transcription.failed","item_id":"<item_id>","content_index":0,"error":{"code":"<code>","message":"<message>","param":"<param>"}}"#,
    ),
    (
        "session_finished",
        r#"{"event_id":"event_2239","type":"session.finished"}"#,
    ),
    (
        "unknown",
        r#"{"type":"response.created","response":{"id":"r"}}"#,
    ),
    (
        "error_nulls",
        r#"{"type":"error","error":{"type":"server_error","code":null,"message":"\u6a21\u578b\ud83d\ude00","param":null}}"#,
    ),
];

// ---- WAV reader ---------------------------------------------------------------------------

/// Buffer sizes for reads, chosen by the configuration bytes: empty, odd and around the
/// reader's internal 1024-byte buffer.
const SIZES: [usize; 16] = [
    0, 1, 2, 3, 4, 5, 7, 16, 63, 64, 511, 512, 513, 1024, 1025, 4097,
];

/// The largest single allocation `WavReader` may make (its `fmt ` chunk is at most 1 KiB).
const WAV_ALLOC_LIMIT: usize = 64 << 10;

/// A reader over the input that hands out short reads, is interrupted now and then, and can
/// fail for good at a chosen offset.
struct Source<'a> {
    data: &'a [u8],
    pos: Rc<Cell<usize>>,
    max_read: usize,
    interrupt_every: usize,
    fail_at: Option<usize>,
    calls: usize,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt_every != 0 && self.calls % self.interrupt_every == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let pos = self.pos.get();
        let mut end = self.data.len();
        if let Some(f) = self.fail_at {
            if pos >= f {
                return Err(io::Error::other("injected failure"));
            }
            end = end.min(f);
        }
        let mut n = buf.len().min(end - pos);
        if self.max_read != 0 {
            n = n.min(self.max_read);
        }
        buf[..n].copy_from_slice(&self.data[pos..pos + n]);
        self.pos.set(pos + n);
        Ok(n)
    }
}

/// `WavReader` on the input after its first 4 bytes, which choose: short reads and
/// interruptions of the source (byte 0), the sizes of 4 successive reads, repeated (bytes 1-2),
/// samples or bytes for each and an I/O failure (byte 3). Invariants: no panic, no allocation
/// over 64 KiB, reads return at most what was asked (whole samples), the reader reaches the end
/// in a bounded number of calls and stays there, and what it returns is exactly the data chunk
/// (as far as the header's size and the file allow, in whole samples).
pub fn check_wav(data: &[u8]) {
    let (cfg, file) = data.split_at(data.len().min(4));
    let cfg = |i: usize| cfg.get(i).copied().unwrap_or(0);
    let max_read = [0, 1, 2, 3, 5, 8, 13, 64][usize::from(cfg(0) & 7)];
    let interrupt_every = [0, 0, 2, 3, 7][usize::from(cfg(0) >> 3) % 5];
    let mut sizes = [
        SIZES[usize::from(cfg(1) & 15)],
        SIZES[usize::from(cfg(1) >> 4)],
        SIZES[usize::from(cfg(2) & 15)],
        SIZES[usize::from(cfg(2) >> 4)],
    ];
    let samples_op = |call: usize| cfg(3) >> (call % 4) & 1 == 1;
    // Every round of 4 reads has one that can make progress (at least one sample).
    if sizes.iter().all(|&s| s < 2) {
        sizes[3] = 2;
    }
    let fail_at = (cfg(3) & 0x80 != 0).then(|| file.len() * usize::from((cfg(3) >> 4) & 7) / 8);
    let pos = Rc::new(Cell::new(0));
    let source = Source {
        data: file,
        pos: Rc::clone(&pos),
        max_read,
        interrupt_every,
        fail_at,
        calls: 0,
    };
    let mut got = Vec::with_capacity(file.len());
    let mut bytes = vec![0u8; SIZES[15]];
    let mut samples = vec![0i16; SIZES[15]];

    reset_largest_alloc();
    let mut r = match WavReader::new(source) {
        Ok(r) => r,
        Err(e) => {
            if fail_at.is_none() {
                assert!(
                    matches!(e, WavError::Format(_)),
                    "{e:?} without an I/O failure"
                );
            }
            assert!(!e.to_string().is_empty());
            assert!(largest_alloc() <= WAV_ALLOC_LIMIT);
            return;
        }
    };
    let spec = r.spec();
    assert_eq!(spec.bits_per_sample, 16);
    assert!(spec.channels > 0 && spec.sample_rate > 0);
    let data_start = pos.get();
    let declared = r.len_samples();

    let mut ended = false;
    let mut failed = false;
    for call in 0..2 * file.len() + 16 {
        let size = sizes[call % 4];
        let (res, capacity) = if samples_op(call) {
            let res = r.read_samples(&mut samples[..size]).map(|n| {
                assert!(n <= size);
                for s in &samples[..n] {
                    got.extend_from_slice(&s.to_le_bytes());
                }
                n * 2
            });
            (res, size * 2)
        } else {
            let res = r.read_bytes(&mut bytes[..size]).inspect(|&n| {
                assert!(n <= size && n % 2 == 0, "read_bytes gave {n} for {size}");
                got.extend_from_slice(&bytes[..n]);
            });
            (res, size)
        };
        match res {
            Err(e) => {
                assert!(fail_at.is_some(), "{e:?} without an I/O failure");
                assert!(!e.to_string().is_empty());
                failed = true;
                break;
            }
            Ok(0) if capacity >= 2 => {
                ended = true;
                break;
            }
            Ok(_) => {}
        }
        assert!(got.len() <= file.len() - data_start, "more audio than file");
    }
    assert!(ended || failed, "the reader did not reach the end");
    let rest = &file[data_start..];
    if ended {
        assert_eq!(
            r.read_bytes(&mut bytes[..2]).unwrap(),
            0,
            "the end is not final"
        );
        assert_eq!(r.read_samples(&mut samples[..1]).unwrap(), 0);
        let available = (rest.len() & !1) as u64;
        let expected = declared.map_or(available, |k| available.min(2 * k)) as usize;
        assert!(got == rest[..expected], "the audio is not the data chunk");
    } else {
        assert!(rest.starts_with(&got), "the audio is not the data chunk");
    }
    if let Some(k) = declared {
        assert!(got.len() as u64 <= 2 * k);
    }
    let largest = largest_alloc();
    assert!(
        largest <= WAV_ALLOC_LIMIT,
        "an allocation of {largest} bytes"
    );
}

/// `wav::header` for these parameters, read back by `WavReader`.
pub fn check_wav_header(sample_rate: u32, channels: u16, data_bytes: u32) {
    let h = wav::header(sample_rate, channels, data_bytes);
    match WavReader::new(&h[..]) {
        Ok(r) => {
            assert!(sample_rate != 0 && channels != 0);
            let spec = r.spec();
            assert_eq!((spec.sample_rate, spec.channels), (sample_rate, channels));
            let expected =
                (data_bytes != 0 && data_bytes != u32::MAX).then_some(u64::from(data_bytes / 2));
            assert_eq!(r.len_samples(), expected);
        }
        Err(e) => {
            assert!(sample_rate == 0 || channels == 0, "{e}");
        }
    }
}

/// Valid and near-valid WAV files, each behind 4 configuration bytes (see [`check_wav`]).
pub fn wav_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn pcm(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i as i16).wrapping_mul(1237)).to_le_bytes())
            .collect()
    }
    fn file(cfg: [u8; 4], chunks: &[(&[u8; 4], &[u8])], data: &[u8], data_size: u32) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        for (id, payload) in chunks {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            body.extend_from_slice(payload);
            if payload.len() % 2 == 1 {
                body.push(0);
            }
        }
        body.extend_from_slice(b"data");
        body.extend_from_slice(&data_size.to_le_bytes());
        body.extend_from_slice(data);
        let mut v = cfg.to_vec();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }
    fn fmt(tag: u16, channels: u16, rate: u32, extra: &[u8]) -> Vec<u8> {
        let mut f = tag.to_le_bytes().to_vec();
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        f.extend_from_slice(&(2 * channels).to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(extra);
        f
    }
    let mut extensible_tail = 22u16.to_le_bytes().to_vec(); // cbSize
    extensible_tail.extend_from_slice(&16u16.to_le_bytes()); // valid bits
    extensible_tail.extend_from_slice(&4u32.to_le_bytes()); // channel mask
    extensible_tail.extend_from_slice(&1u16.to_le_bytes()); // sub-format: PCM …
    extensible_tail.extend_from_slice(b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71");
    let mono16k = fmt(1, 1, 16000, &[]);
    let plain = |cfg, n: usize| {
        let d = pcm(n);
        file(cfg, &[(b"fmt ", &mono16k)], &d, d.len() as u32)
    };
    let mut header_only = wav::header(16000, 1, 320).to_vec();
    header_only.splice(0..0, [0x25, 0x9d, 0x5f, 0x03]);
    header_only.extend_from_slice(&pcm(160));
    vec![
        ("mono_16k", plain([0, 0xd2, 0xfe, 0x05], 200)),
        ("mono_16k_bytewise", plain([0x11, 0x31, 0x75, 0x0a], 40)),
        (
            "stereo_8k_list_odd",
            file(
                [0x02, 0x8b, 0x4c, 0x00],
                &[
                    (b"LIST", b"INFOISFT\x03\x00\x00\x00abc"),
                    (b"fmt ", &fmt(1, 2, 8000, &[])),
                    (b"fact", b"\x10\x00\x00\x00"),
                ],
                &pcm(64),
                128,
            ),
        ),
        (
            "extensible_48k",
            file(
                [0x03, 0x9c, 0xa7, 0x0f],
                &[(b"fmt ", &fmt(0xfffe, 1, 48000, &extensible_tail))],
                &pcm(96),
                192,
            ),
        ),
        (
            "fmt_18_cbsize",
            file(
                [0x00, 0xee, 0xdd, 0x00],
                &[(b"fmt ", &fmt(1, 1, 22050, &[0, 0]))],
                &pcm(50),
                100,
            ),
        ),
        (
            "streaming_size_ffffffff",
            file(
                [0x04, 0x7f, 0xf8, 0x03],
                &[(b"fmt ", &mono16k)],
                &pcm(75),
                u32::MAX,
            ),
        ),
        (
            "streaming_size_0",
            file(
                [0x19, 0x24, 0x6b, 0x06],
                &[(b"fmt ", &mono16k)],
                &pcm(33),
                0,
            ),
        ),
        (
            "odd_size_then_chunk",
            file(
                [0x05, 0x36, 0x9a, 0x09],
                &[(b"fmt ", &mono16k)],
                b"\x01\x02\x03\x04\x05\x06\x07LIST\x04\x00\x00\x00junk",
                7,
            ),
        ),
        (
            "truncated_data",
            file(
                [0x06, 0xaf, 0x12, 0x0c],
                &[(b"fmt ", &mono16k)],
                &pcm(5),
                1000,
            ),
        ),
        (
            "io_failure",
            file(
                [0x22, 0xdc, 0xcd, 0xb3],
                &[(b"fmt ", &mono16k)],
                &pcm(100),
                200,
            ),
        ),
        ("from_header_fn", header_only),
    ]
}

// ---- replay buffer ------------------------------------------------------------------------

/// Operations per replay input at most, so one input stays fast however long it is.
pub const REPLAY_MAX_OPS: usize = 2048;

const NS_PER_MS: u64 = 1_000_000;

/// The bound the replay documents on the frame text it holds: 128 bytes per millisecond of
/// window, and at least 1 MiB.
fn held_bytes_bound(window_ms: u64) -> u64 {
    window_ms.saturating_mul(128).max(1 << 20)
}

/// The duration of `samples` at `rate` as the replay counts it: nanoseconds, rounded down.
fn pcm_ns(samples: u64, rate: u32) -> u64 {
    let ns = u128::from(samples) * 1_000_000_000 / u128::from(rate.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The input, read from the front; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
}

/// The audio byte at stream position `i`: distinct enough that a replay from the wrong place
/// does not match the suffix it should be.
fn audio_byte(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// What the checks know of one recorded frame.
struct ModelFrame {
    byte_start: usize,
    bytes: usize,
    start_ns: u64,
    /// `Some(rate)` for PCM, which the replay may cut; `None` for coded audio.
    rate: Option<u32>,
}

/// Standard padded base64, decoded; `None` if it is not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (k, quad) in b.chunks(4).enumerate() {
        let last = k + 1 == b.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// A server event, through the real parser.
fn server_event(json: String) -> EventKind {
    Event::parse(json).kind
}

/// Drives the replay buffer (`Replay`, crate-private, through `__fuzz`) with the input as a
/// sequence of operations: PCM appends at assorted rates (0 Hz and 2^32-1 Hz included), coded
/// appends of assorted durations, commits, `session.finish`, server events built as JSON and
/// parsed (`speech_stopped` with offsets near the audio sent, far past it, 2^63-1, 2^64-1,
/// negative, fractional, missing; `completed`/`failed` with or without item ids;
/// `session.finished`; noise), loss reports, new sessions (a reconnect), speech gate openings
/// with device positions, and the settling of a quiet gate's hangover. It checks:
/// - nothing panics;
/// - the audio held stays within the window, and its text within the memory bound;
/// - the acknowledged point never goes backwards, never passes the audio sent, and never
///   passes the furthest point the server could acknowledge (an offset within the audio
///   sent, a commit, or `session.finish`): an offset past the audio sent acknowledges nothing;
/// - accounting: audio without a result is held, pending as lost, or already reported lost,
///   and held plus pending never exceeds it;
/// - a new session is sent a suffix of the audio, as valid append frames, starting at the
///   acknowledged point (at most 2 samples before it in a PCM frame, at the start of a coded
///   frame that holds it) unless the audio in between was reported lost; it is told the
///   milliseconds replayed; its commits are exactly those sent after the replay's start, and
///   none comes first.
pub fn check_replay(data: &[u8]) {
    use qwen_asr_realtime::__fuzz::{FrameAudio, Replay};

    let mut input = Input(data);
    let window_ms = match input.u8() % 8 {
        0 => 0,
        1 => 1,
        2 => 50,
        3 => 300,
        4 => 1_000,
        5 => 30_000,
        6 => u64::MAX,
        _ => input.u64(),
    };
    let window_ns = window_ms.saturating_mul(NS_PER_MS);
    let mut r = Replay::new(window_ms);
    let mut sent: Vec<u8> = Vec::new();
    let mut frames: Vec<ModelFrame> = Vec::new();
    let mut commits: Vec<usize> = Vec::new();
    let mut end_ns = 0u64;
    let mut reported_ns = 0u64;
    let mut finish_at: Option<u64> = None;
    let mut ackable = 0u64;
    let mut last_acked = 0u64;
    let mut text = String::new();
    for _ in 0..REPLAY_MAX_OPS {
        if input.0.is_empty() {
            break;
        }
        let before = r.accounting();
        let op = input.u8();
        match op % 12 {
            0 | 1 => {
                let rate = [16_000, 16_000, 8_000, 44_100, 48_000, 1, 0, u32::MAX]
                    [usize::from(input.u8() % 8)];
                let samples = 1 + usize::from(input.u8()) * (1 + usize::from(op >> 4));
                let audio: Vec<u8> = (sent.len()..sent.len() + samples * 2)
                    .map(audio_byte)
                    .collect();
                qwen_asr_realtime::__fuzz::write_append_json(&mut text, &audio);
                r.audio(
                    text.as_str().into(),
                    FrameAudio::Pcm {
                        bytes: audio.len() as u64,
                        sample_rate: rate,
                    },
                );
                frames.push(ModelFrame {
                    byte_start: sent.len(),
                    bytes: audio.len(),
                    start_ns: end_ns,
                    rate: Some(rate),
                });
                end_ns = end_ns.saturating_add(pcm_ns(samples as u64, rate));
                sent.extend_from_slice(&audio);
            }
            2 => {
                let duration_us = match input.u8() % 6 {
                    0 => 0,
                    1 => 2_500,
                    2 => 20_000,
                    3 => 60_000,
                    4 => u64::from(input.u8()) << (input.u8() % 64),
                    _ => u64::MAX,
                };
                let bytes = 1 + usize::from(input.u8());
                let audio: Vec<u8> = (sent.len()..sent.len() + bytes).map(audio_byte).collect();
                qwen_asr_realtime::__fuzz::write_append_json(&mut text, &audio);
                r.audio(text.as_str().into(), FrameAudio::Coded { duration_us });
                frames.push(ModelFrame {
                    byte_start: sent.len(),
                    bytes,
                    start_ns: end_ns,
                    rate: None,
                });
                end_ns = end_ns.saturating_add(duration_us.saturating_mul(1_000));
                sent.extend_from_slice(&audio);
            }
            3 => {
                r.commit();
                commits.push(sent.len());
                ackable = ackable.max(end_ns);
            }
            4 => {
                let item = input.u8() % 8;
                let session_ms = (end_ns - before.session_base) / NS_PER_MS;
                let k = input.u8();
                let ms = match k % 8 {
                    0..=3 => (session_ms as u128 * u128::from(input.u8()) / 200) as u64,
                    4 => i64::MAX as u64,
                    5 => u64::MAX,
                    _ => input.u64(),
                };
                let value = match k >> 5 {
                    5 => "-1".to_owned(),
                    6 => format!("{ms}.5"),
                    7 => "null".to_owned(),
                    _ => ms.to_string(),
                };
                let kind = server_event(format!(
                    r#"{{"type":"input_audio_buffer.speech_stopped","item_id":"item_{item}","audio_end_ms":{value}}}"#
                ));
                if let EventKind::SpeechStopped {
                    audio_end_ms: Some(ms),
                    ..
                } = kind
                {
                    let at = before
                        .session_base
                        .saturating_add(ms.saturating_mul(NS_PER_MS));
                    if at <= end_ns.saturating_add(NS_PER_MS) {
                        ackable = ackable.max(at.min(end_ns));
                    }
                }
                r.observe(&kind);
            }
            5 | 6 => {
                let item = input.u8() % 9;
                let id = if item == 8 {
                    String::new()
                } else {
                    format!(r#","item_id":"item_{item}""#)
                };
                let kind = if op % 12 == 5 { "completed" } else { "failed" };
                r.observe(&server_event(format!(
                    r#"{{"type":"conversation.item.input_audio_transcription.{kind}"{id},"transcript":"t"}}"#
                )));
            }
            7 => {
                r.observe(&server_event(r#"{"type":"session.finished"}"#.into()));
                if let Some(at) = finish_at {
                    assert!(r.accounting().acked >= at, "session.finished after finish");
                    ackable = ackable.max(at);
                }
            }
            8 => {
                r.finish();
                finish_at = Some(end_ns);
            }
            9 => check_new_session(&mut r, &sent, &frames, &commits, reported_ns),
            10 => {
                reported_ns = reported_ns.saturating_add(r.take_lost_ms().saturating_mul(NS_PER_MS))
            }
            _ => {
                let noise = [
                    r#"{"type":"input_audio_buffer.speech_started","item_id":"item_1","audio_start_ms":-1}"#,
                    r#"{"type":"input_audio_buffer.committed","item_id":"item_2"}"#,
                    r#"{"type":"input_audio_buffer.speech_stopped","audio_end_ms":5}"#,
                    r#"{"type":"input_audio_buffer.speech_stopped","item_id":"item_3"}"#,
                    r#"{"type":"error","error":{"message":"x"}}"#,
                    r#"{"type":"session.created","session":{"sample_rate":4294967296}}"#,
                    r#"{"type":"input_audio_buffer.speech_stopped","item_id":"item_4","audio_end_ms":18446744073709551616}"#,
                    "not json",
                ];
                match input.u8() % 10 {
                    // A speech gate opening at an assorted device position, and the positions
                    // of assorted offsets: never a panic, and no effect on the accounting.
                    8 => {
                        r.device_jump(input.u64());
                        for ms in [0, input.u64(), u64::MAX] {
                            let _ = r.device_ms(ms);
                        }
                        assert_eq!(r.accounting(), before, "a device position is not audio");
                    }
                    // The gate quiet: the hangover after every answered opening is settled.
                    9 => {
                        if r.settle() {
                            assert_eq!(r.accounting().acked, end_ns, "settled to the end");
                            assert_eq!(r.pending_ms(), 0);
                            ackable = end_ns;
                        }
                    }
                    i => r.observe(&server_event(noise[usize::from(i)].into())),
                }
            }
        }
        let a = r.accounting();
        assert_eq!(a.end, end_ns, "the audio recorded");
        assert!(a.acked >= last_acked, "acknowledged went back: {a:?}");
        assert!(a.acked <= a.end, "acknowledged past the end: {a:?}");
        assert!(
            a.acked <= ackable,
            "acknowledged past anything the server could: {a:?}, at most {ackable}"
        );
        last_acked = a.acked;
        assert!(a.held <= window_ns, "held past the window: {a:?}");
        assert!(
            a.held_bytes <= held_bytes_bound(window_ms),
            "held past the memory bound: {a:?}"
        );
        let unacked = a.end - a.acked;
        assert!(a.unacked_held <= a.held, "{a:?}");
        assert!(
            a.unacked_held.saturating_add(a.lost_pending) <= unacked,
            "counted twice: {a:?}"
        );
        assert!(
            u128::from(unacked)
                <= u128::from(a.unacked_held)
                    + u128::from(a.lost_pending)
                    + u128::from(reported_ns),
            "audio without a result is neither held nor reported: {a:?}, reported {reported_ns}"
        );
        assert_eq!(r.unacked_ms(), a.unacked_held.div_ceil(NS_PER_MS));
    }
}

/// `start_session` and the checks on what it replays (see [`check_replay`]).
fn check_new_session(
    r: &mut qwen_asr_realtime::__fuzz::Replay,
    sent: &[u8],
    frames: &[ModelFrame],
    commits: &[usize],
    reported_ns: u64,
) {
    let before = r.accounting();
    let (replay, ms) = r.start_session();
    let after = r.accounting();
    let mut audio = Vec::new();
    let mut commit_at = Vec::new();
    for (k, f) in replay.iter().enumerate() {
        match f {
            None => {
                assert!(k > 0, "a commit first: it would commit an empty buffer");
                commit_at.push(audio.len());
            }
            Some(text) => {
                let v: Value = serde_json::from_str(text.as_str()).expect("a JSON frame");
                assert_eq!(v["type"], "input_audio_buffer.append");
                let b64 = v["audio"].as_str().expect("audio");
                audio.extend(base64_decode(b64).expect("standard padded base64"));
            }
        }
    }
    assert!(
        sent.ends_with(&audio),
        "the replay is not a suffix of the audio sent"
    );
    let p = sent.len() - audio.len();
    let p_ns = if p == sent.len() {
        before.end
    } else {
        let i = frames.partition_point(|f| f.byte_start <= p) - 1;
        let f = &frames[i];
        let offset = p - f.byte_start;
        assert!(offset < f.bytes);
        match f.rate {
            Some(rate) => {
                assert_eq!(offset % 6, 0, "a cut off a 6-byte group");
                f.start_ns + pcm_ns(offset as u64 / 2, rate)
            }
            None => {
                assert_eq!(offset, 0, "a coded frame was cut");
                f.start_ns
            }
        }
    };
    assert_eq!(after.session_base, p_ns, "the new session's base");
    if p_ns < before.acked {
        let i = frames.partition_point(|f| f.byte_start <= p) - 1;
        let f = &frames[i];
        match f.rate {
            Some(rate) => assert!(
                before.acked - p_ns <= pcm_ns(3, rate) + 1,
                "more than 2 acknowledged samples sent again: {before:?} from {p_ns}"
            ),
            None => assert!(i + 1 == frames.len() || frames[i + 1].start_ns > before.acked),
        }
    } else {
        assert!(
            u128::from(p_ns - before.acked)
                <= u128::from(before.lost_pending) + u128::from(reported_ns),
            "audio skipped without a report: {before:?} from {p_ns}"
        );
    }
    assert_eq!(ms, (before.end - p_ns).div_ceil(NS_PER_MS), "replayed ms");
    let expected: Vec<usize> = commits.iter().copied().filter(|&c| c > p).collect();
    let got: Vec<usize> = commit_at.iter().map(|c| p + c).collect();
    assert_eq!(got, expected, "the commits replayed");
}

/// Replay inputs for the seed corpus and the smoke test: a VAD conversation with a reconnect,
/// a manual one, an offset of 2^63-1 ms after a reconnect (it overflowed), a 1 ms window.
pub fn replay_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Op 96 is a PCM append (96 % 12 == 0) of 1 + 228 × 7 samples: about 100 ms at 16 kHz.
    let append_100ms = [96u8, 0, 228, 96, 0, 228, 96, 0, 228];
    let mut vad = vec![5];
    vad.extend_from_slice(&append_100ms);
    vad.extend_from_slice(&[4, 0, 0, 100, 5, 0, 9]);
    vad.extend_from_slice(&append_100ms);
    vad.extend_from_slice(&[4, 1, 0, 150, 5, 1, 10, 9, 8, 7]);
    let mut manual = vec![5];
    manual.extend_from_slice(&append_100ms);
    manual.extend_from_slice(&[3]);
    manual.extend_from_slice(&append_100ms);
    manual.extend_from_slice(&[3, 5, 8, 9, 2, 2, 20, 5, 8, 9, 10]);
    let mut overflow = vec![5];
    overflow.extend_from_slice(&append_100ms);
    overflow.extend_from_slice(&[4, 0, 0, 100, 5, 0, 9]);
    overflow.extend_from_slice(&append_100ms);
    overflow.extend_from_slice(&[4, 1, 4, 5, 1, 9, 10]);
    let mut tiny_window = vec![1];
    for _ in 0..40 {
        tiny_window.extend_from_slice(&[0, 2, 0x80, 2, 0, 0, 10]);
    }
    tiny_window.push(9);
    vec![
        ("vad_reconnect", vad),
        ("manual_commits", manual),
        ("offset_overflow", overflow),
        ("tiny_window", tiny_window),
    ]
}
