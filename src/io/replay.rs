//! The replay buffer: audio that was sent but whose transcript has not come back yet, kept so
//! that a new connection can be given it again after the old one died.
//!
//! Positions are nanoseconds of the caller's audio stream, counted across connections: the
//! window is a duration (an Opus frame's duration is not proportional to its size), and a
//! nanosecond is a whole fraction of a sample at both rates the service takes (62,500 ns at
//! 16 kHz, 125,000 ns at 8 kHz), so PCM positions never drift. The server speaks in
//! milliseconds of its own session's audio; `session_base` maps one to the other.
//!
//! Everything the server says is hostile: an offset is saturated on the way in, and one past
//! the audio sent is ignored rather than clamped, since acknowledging audio that has no result
//! would drop it without a report. Acknowledgements never go backwards.

use std::collections::VecDeque;

use tungstenite::Utf8Bytes;

use crate::io::device_time::DeviceTimeline;
use crate::protocol::EventKind;

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_US: u64 = 1_000;
const NS_PER_S: u128 = 1_000_000_000;

/// How far past the audio sent a server offset may point and still be taken (as the end of
/// what was sent): the server may round its milliseconds up.
const OFFSET_SLACK_NS: u64 = NS_PER_MS;

/// Utterances stopped but not completed that are remembered: the server has one or two in
/// flight; a server that never completes them must not grow this without bound.
const MAX_STOPPED_ITEMS: usize = 64;

/// Commits awaiting their result that are remembered by position; older ones are only counted
/// (their result then acknowledges nothing, which errs towards replaying and reporting more).
const MAX_PENDING_COMMITS: usize = 1024;

/// Frame text held, per millisecond of window, at most: PCM at 16 kHz takes 43 bytes of base64
/// per millisecond plus about 100 bytes of JSON per frame, so frames of 2 ms or more never
/// reach it. It bounds memory when durations are tiny or wrong (an Opus duration of 0, say);
/// what it lets go is counted as lost, like what the window lets go.
const MAX_HELD_BYTES_PER_WINDOW_MS: u64 = 128;

/// Frame text held at least, whatever the window: one frame of any size fits.
const MIN_HELD_BYTES: u64 = 1 << 20;

/// The audio that one append frame carries, as the replay counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameAudio {
    /// s16le mono PCM: `bytes` of it at `sample_rate` Hz. The frame's base64 must start on a
    /// sample and be split from the caller's audio on 6-byte boundaries (as the append path
    /// does), so that its unacknowledged tail can be cut out of it without decoding.
    Pcm {
        /// Bytes of PCM (not of base64).
        bytes: u64,
        /// Samples per second.
        sample_rate: u32,
    },
    /// Coded audio (Opus) lasting this many microseconds: replayed whole, never cut.
    Coded {
        /// Its duration in microseconds.
        duration_us: u64,
    },
}

impl FrameAudio {
    /// The frame's audio in whole milliseconds.
    pub(crate) fn duration_ms(self) -> u64 {
        self.duration_ns() / 1_000_000
    }

    fn duration_ns(self) -> u64 {
        match self {
            FrameAudio::Pcm { bytes, sample_rate } => pcm_ns(bytes / 2, sample_rate),
            FrameAudio::Coded { duration_us } => duration_us.saturating_mul(NS_PER_US),
        }
    }
}

/// The duration of `samples` at `rate`, in nanoseconds (rounded down; saturating).
fn pcm_ns(samples: u64, rate: u32) -> u64 {
    let ns = u128::from(samples) * NS_PER_S / u128::from(rate.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Whole samples in `ns` at `rate` (rounded down).
fn samples_in(ns: u64, rate: u32) -> u64 {
    let s = u128::from(ns) * u128::from(rate.max(1)) / NS_PER_S;
    u64::try_from(s).unwrap_or(u64::MAX)
}

/// Nanoseconds as milliseconds, rounded up: a loss report must not round audio away.
fn ms_ceil(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_MS)
}

/// One append frame kept as sent (replaying it costs no re-encoding), and where its audio sits.
struct Frame {
    start: u64,
    duration: u64,
    audio: FrameAudio,
    text: Utf8Bytes,
}

impl Frame {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.duration)
    }

    /// Memory it holds, counted against the byte bound.
    fn held_bytes(&self) -> u64 {
        self.text.len() as u64 + std::mem::size_of::<Sent>() as u64
    }

    /// Cuts away the audio before `acked`, which lies inside the frame, if the frame can be cut:
    /// PCM, in whole 6-byte groups (so the base64 is a substring and no unacknowledged sample
    /// is skipped: at most 2 acknowledged samples are sent again). Coded frames stay whole.
    fn cut_before(&mut self, acked: u64) {
        let FrameAudio::Pcm { bytes, sample_rate } = self.audio else {
            return;
        };
        let done_samples = samples_in(acked.saturating_sub(self.start), sample_rate);
        let cut = done_samples.saturating_mul(2) / 6 * 6;
        if cut == 0 || cut >= bytes {
            return;
        }
        let Some(text) = cut_append(&self.text, bytes, cut) else {
            return;
        };
        let end = self.end();
        self.start = self.start.saturating_add(pcm_ns(cut / 2, sample_rate));
        self.duration = end - self.start;
        self.audio = FrameAudio::Pcm {
            bytes: bytes - cut,
            sample_rate,
        };
        self.text = text;
    }
}

/// The append frame `text` (`{..."audio":"<base64 of pcm_bytes>"}`) without the audio's
/// first `cut` bytes, a multiple of 3, or `None` if `text` is not laid out like that. The
/// event id is kept: the frame goes to a new session, which has not seen it.
fn cut_append(text: &str, pcm_bytes: u64, cut: u64) -> Option<Utf8Bytes> {
    const AUDIO_KEY: &str = "\"audio\":\"";
    const TAIL: &str = "\"}";
    let payload_at = text.find(AUDIO_KEY)? + AUDIO_KEY.len();
    let b64 = text.get(payload_at..)?.strip_suffix(TAIL)?;
    if cut % 3 != 0 || b64.len() as u64 != pcm_bytes.div_ceil(3).checked_mul(4)? {
        return None;
    }
    let rest = b64.get(usize::try_from(cut / 3 * 4).ok()?..)?;
    let mut out = String::with_capacity(payload_at + rest.len() + TAIL.len());
    out.push_str(&text[..payload_at]);
    out.push_str(rest);
    out.push_str(TAIL);
    Some(Utf8Bytes::from(out))
}

/// One thing sent that a new session needs again.
enum Sent {
    Audio(Frame),
    /// A commit at this stream position (manual mode).
    Commit {
        at: u64,
    },
}

/// Where the accounting stands, in nanoseconds of audio (for checks; see `Replay::accounting`).
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accounting {
    /// Audio recorded so far: the position of the next frame.
    pub end: u64,
    /// Audio before this position has its result; it never goes backwards.
    pub acked: u64,
    /// Audio kept in the window (whole frames, a partly acknowledged first one included).
    pub held: u64,
    /// Kept audio without a result: what a new session is sent (before rounding to a cut).
    pub unacked_held: u64,
    /// Audio let go without a result and not yet reported by `take_lost_ms`.
    pub lost_pending: u64,
    /// Frame text kept, in bytes, with each entry's bookkeeping.
    pub held_bytes: u64,
    /// Where the current server session's audio starts.
    pub session_base: u64,
}

/// Audio sent and not yet transcribed, kept within a window of audio duration, to be sent again
/// on a new connection.
pub struct Replay {
    sent: VecDeque<Sent>,
    /// Stream position of the next audio.
    end: u64,
    /// Audio held in `sent` (wide: frames of any duration add up without saturating, so
    /// taking each one away again is exact).
    held: u128,
    /// Frame text held in `sent`, in bytes.
    held_bytes: u64,
    /// The most audio `sent` may hold (the replay window).
    window: u64,
    /// The most frame text `sent` may hold.
    max_held_bytes: u64,
    /// Audio before this position has its result.
    acked: u64,
    /// Where the current server session's audio starts in the stream.
    session_base: u64,
    /// Positions of commits still waiting for their result, oldest first.
    pending_commits: VecDeque<u64>,
    /// Commits older than `pending_commits` whose position was let go (bounded memory).
    forgotten_commits: u64,
    /// VAD mode: where each stopped utterance ended, by item id, oldest first.
    stopped_at: VecDeque<(String, u64)>,
    /// Where `session.finish` was sent, if it was: `session.finished` acknowledges up to there.
    finish_at: Option<u64>,
    /// Audio pushed out of the window before its result came: [start, end).
    evicted: Option<(u64, u64)>,
    /// Where the stream's audio was captured, to place the server's offsets on the device
    /// timeline.
    device: DeviceTimeline,
    /// Where the audio of the speech gate's last opening starts, if a gate is in use.
    last_opening: Option<u64>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("frames", &self.sent.len())
            .field("unacked_ms", &self.unacked_ms())
            .finish()
    }
}

impl Replay {
    /// A replay buffer that keeps up to `window_ms` of sent audio.
    pub fn new(window_ms: u64) -> Replay {
        Replay {
            sent: VecDeque::new(),
            end: 0,
            held: 0,
            held_bytes: 0,
            window: window_ms.saturating_mul(NS_PER_MS),
            max_held_bytes: window_ms
                .saturating_mul(MAX_HELD_BYTES_PER_WINDOW_MS)
                .max(MIN_HELD_BYTES),
            acked: 0,
            session_base: 0,
            pending_commits: VecDeque::new(),
            forgotten_commits: 0,
            stopped_at: VecDeque::new(),
            finish_at: None,
            evicted: None,
            device: DeviceTimeline::new(),
            last_opening: None,
        }
    }

    /// Records an append frame as sent, letting the oldest audio go past the window.
    pub fn audio(&mut self, text: Utf8Bytes, audio: FrameAudio) {
        let frame = Frame {
            start: self.end,
            duration: audio.duration_ns(),
            audio,
            text,
        };
        self.device.record(frame.start, frame.duration);
        self.end = frame.end();
        self.held += u128::from(frame.duration);
        self.held_bytes = self.held_bytes.saturating_add(frame.held_bytes());
        self.sent.push_back(Sent::Audio(frame));
        while self.held > u128::from(self.window) || self.held_bytes > self.max_held_bytes {
            match self.sent.pop_front() {
                Some(Sent::Audio(f)) => {
                    self.held -= u128::from(f.duration);
                    self.held_bytes -= f.held_bytes();
                    if f.end() > self.acked {
                        let from = self.evicted.map_or(f.start, |(s, _)| s);
                        self.evicted = Some((from, f.end()));
                    }
                }
                Some(Sent::Commit { .. }) => {
                    self.held_bytes -= std::mem::size_of::<Sent>() as u64;
                }
                None => break,
            }
        }
    }

    /// Records a commit as sent.
    pub fn commit(&mut self) {
        if self.pending_commits.len() >= MAX_PENDING_COMMITS {
            self.pending_commits.pop_front();
            self.forgotten_commits += 1;
        }
        self.pending_commits.push_back(self.end);
        self.sent.push_back(Sent::Commit { at: self.end });
        self.held_bytes = self
            .held_bytes
            .saturating_add(std::mem::size_of::<Sent>() as u64);
    }

    /// Records `session.finish` as sent: from now on, `session.finished` means that all the
    /// audio sent so far has had its result. Without it, that event acknowledges nothing.
    pub fn finish(&mut self) {
        self.finish_at = Some(self.end);
    }

    /// Learns from a server event which audio has its result.
    pub fn observe(&mut self, kind: &EventKind) {
        match kind {
            EventKind::SessionFinished => {
                if let Some(at) = self.finish_at {
                    self.pending_commits.clear();
                    self.forgotten_commits = 0;
                    self.stopped_at.clear();
                    self.ack(at);
                }
            }
            EventKind::SpeechStopped {
                item_id: Some(id),
                audio_end_ms: Some(ms),
            } => {
                let at = self
                    .session_base
                    .saturating_add(ms.saturating_mul(NS_PER_MS));
                if at > self.end.saturating_add(OFFSET_SLACK_NS) {
                    log::warn!(
                        "ignored speech_stopped of {id} at {ms} ms: past the {} ms sent in this session",
                        (self.end - self.session_base) / NS_PER_MS
                    );
                    return;
                }
                self.stopped_at.retain(|(known, _)| known != id);
                if self.stopped_at.len() >= MAX_STOPPED_ITEMS {
                    self.stopped_at.pop_front();
                }
                self.stopped_at.push_back((id.clone(), at.min(self.end)));
            }
            EventKind::Completed(c) => self.item_done(c.item_id.as_deref()),
            EventKind::Failed(f) => self.item_done(f.item_id.as_deref()),
            _ => {}
        }
    }

    fn item_done(&mut self, item_id: Option<&str>) {
        let vad_end = item_id.and_then(|id| {
            let i = self.stopped_at.iter().position(|(known, _)| known == id)?;
            self.stopped_at.remove(i).map(|(_, at)| at)
        });
        let done_to = match vad_end {
            Some(at) => at,
            // Manual mode: results come back in commit order.
            None if self.forgotten_commits > 0 => {
                self.forgotten_commits -= 1;
                return;
            }
            None => match self.pending_commits.pop_front() {
                Some(at) => at,
                None => return,
            },
        };
        self.ack(done_to);
    }

    fn ack(&mut self, to: u64) {
        let to = to.min(self.end);
        if to <= self.acked {
            return;
        }
        self.acked = to;
        while let Some(front) = self.sent.front() {
            match front {
                Sent::Audio(f) if f.end() <= to => {
                    self.held -= u128::from(f.duration);
                    self.held_bytes -= f.held_bytes();
                    self.sent.pop_front();
                }
                // A commit at or before the acknowledged point has its result too.
                Sent::Commit { at } if *at <= to => {
                    self.held_bytes -= std::mem::size_of::<Sent>() as u64;
                    self.sent.pop_front();
                }
                _ => break,
            }
        }
        if let Some((_, end)) = self.evicted {
            if to >= end {
                self.evicted = None;
            }
        }
    }

    /// The next audio sent was captured at `device_ms` on the device timeline (the speech
    /// gate opened there).
    pub fn device_jump(&mut self, device_ms: u64) {
        self.device.jump_to(device_ms.saturating_mul(NS_PER_MS));
        self.last_opening = Some(self.end);
    }

    /// A frame of `audio` was appended but never sent (shed from the backlog): it still took
    /// its time on the device timeline.
    pub fn device_skip(&mut self, audio: FrameAudio) {
        self.device.skip(audio.duration_ns());
    }

    /// With the speech gate closed: if every utterance has its result (the last opening's
    /// included, no stopped utterance or commit waiting), the audio after the last result is
    /// the gate's hangover, which the server heard as silence: nothing in it awaits a result,
    /// so it is acknowledged. True if so. Otherwise (an opening with no result at all, say)
    /// nothing changes, and that audio is replayed or reported as usual.
    pub fn settle(&mut self) -> bool {
        let answered = self.last_opening.is_some_and(|at| self.acked > at);
        if !answered
            || !self.pending_commits.is_empty()
            || self.forgotten_commits > 0
            || !self.stopped_at.is_empty()
        {
            return false;
        }
        self.ack(self.end);
        true
    }

    /// Where the current session's offset `session_ms` lies on the device timeline, in ms;
    /// `None` for an offset past the audio sent in this session (a hostile or confused
    /// server), or in a stretch too old to be remembered.
    pub fn device_ms(&self, session_ms: u64) -> Option<u64> {
        let at = self
            .session_base
            .saturating_add(session_ms.saturating_mul(NS_PER_MS));
        if at > self.end.saturating_add(OFFSET_SLACK_NS) {
            return None;
        }
        self.device
            .device_ns(at.min(self.end))
            .map(|ns| ns / NS_PER_MS)
    }

    /// Audio sent without a result, whether a new session would be sent it again or it is
    /// already lost, in ms (rounded up): 0 when every result is in.
    pub fn pending_ms(&self) -> u64 {
        ms_ceil(self.unacked_held().saturating_add(self.lost_pending()))
    }

    /// Audio that fell out of the window without a result: lost, in milliseconds (rounded up).
    /// Reported once: the count restarts after this call.
    pub fn take_lost_ms(&mut self) -> u64 {
        let lost = self.lost_pending();
        self.evicted = None;
        ms_ceil(lost)
    }

    fn lost_pending(&self) -> u64 {
        self.evicted
            .map_or(0, |(start, end)| end.saturating_sub(start.max(self.acked)))
    }

    /// Where the kept audio starts: the first kept frame, or the end if none.
    fn kept_from(&self) -> u64 {
        self.sent
            .iter()
            .find_map(|s| match s {
                Sent::Audio(f) => Some(f.start),
                Sent::Commit { .. } => None,
            })
            .unwrap_or(self.end)
    }

    fn unacked_held(&self) -> u64 {
        self.end - self.kept_from().max(self.acked)
    }

    /// Audio sent whose result has not come back and that a new session would be sent, in
    /// milliseconds (rounded up).
    pub fn unacked_ms(&self) -> u64 {
        ms_ceil(self.unacked_held())
    }

    /// What a new session must be sent again, in order: append frames, and `None` where a
    /// commit goes; and the milliseconds of audio in them (rounded up). The replay starts at
    /// the acknowledged point: a PCM frame that holds it is cut to its unacknowledged tail.
    /// Starts a new server session at the first replayed audio.
    pub fn start_session(&mut self) -> (Vec<Option<Utf8Bytes>>, u64) {
        // A commit with nothing before it would commit an empty buffer: its audio is gone.
        while let Some(Sent::Commit { .. }) = self.sent.front() {
            self.held_bytes -= std::mem::size_of::<Sent>() as u64;
            self.sent.pop_front();
        }
        let acked = self.acked;
        if let Some(Sent::Audio(f)) = self.sent.front_mut() {
            if f.start < acked {
                let before = f.held_bytes();
                let duration = f.duration;
                f.cut_before(acked);
                self.held -= u128::from(duration - f.duration);
                self.held_bytes -= before - f.held_bytes();
            }
        }
        self.session_base = self.kept_from();
        self.stopped_at.clear();
        // Only the commits sent again can have a result in the new session.
        self.pending_commits.clear();
        self.forgotten_commits = 0;
        let mut frames = Vec::with_capacity(self.sent.len());
        for s in &self.sent {
            match s {
                Sent::Audio(f) => frames.push(Some(f.text.clone())),
                Sent::Commit { at } => {
                    if self.pending_commits.len() >= MAX_PENDING_COMMITS {
                        self.pending_commits.pop_front();
                        self.forgotten_commits += 1;
                    }
                    self.pending_commits.push_back(*at);
                    frames.push(None);
                }
            }
        }
        (frames, ms_ceil(self.end - self.session_base))
    }

    /// Where the accounting stands (for the fuzz checks).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn accounting(&self) -> Accounting {
        Accounting {
            end: self.end,
            acked: self.acked,
            held: u64::try_from(self.held).unwrap_or(u64::MAX),
            unacked_held: self.unacked_held(),
            lost_pending: self.lost_pending(),
            held_bytes: self.held_bytes,
            session_base: self.session_base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{write_append_json, Completed};

    /// 16 kHz PCM.
    fn pcm(bytes: u64) -> FrameAudio {
        FrameAudio::Pcm {
            bytes,
            sample_rate: 16_000,
        }
    }

    fn frame(n: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("frame{n}"))
    }

    fn completed(item: &str) -> EventKind {
        EventKind::Completed(Completed {
            item_id: Some(item.into()),
            ..Default::default()
        })
    }

    fn stopped(item: &str, ms: u64) -> EventKind {
        EventKind::SpeechStopped {
            item_id: Some(item.into()),
            audio_end_ms: Some(ms),
        }
    }

    fn texts(r: &mut Replay) -> Vec<String> {
        r.start_session()
            .0
            .into_iter()
            .map(|f| f.map_or("commit".into(), |f| f.as_str().to_owned()))
            .collect()
    }

    /// A real append frame of `bytes` bytes of PCM whose byte `i` is `(start + i) % 251`.
    fn real_frame(start: usize, bytes: usize) -> (Utf8Bytes, Vec<u8>) {
        let audio: Vec<u8> = (start..start + bytes).map(|i| (i % 251) as u8).collect();
        let mut text = String::new();
        write_append_json(&mut text, &audio);
        (Utf8Bytes::from(text), audio)
    }

    fn decoded(frame: &str) -> Vec<u8> {
        use base64::Engine;
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(v["audio"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn vad_keeps_the_audio_after_the_last_completed_utterance() {
        let mut r = Replay::new(60_000);
        for i in 0..10 {
            r.audio(frame(i), pcm(3200)); // 100 ms each
        }
        r.observe(&stopped("a", 350));
        assert_eq!(
            r.unacked_ms(),
            1000,
            "nothing acknowledged before completed"
        );
        r.observe(&completed("a"));
        assert_eq!(r.unacked_ms(), 650);
        // Frames 0..=2 end at or before 350 ms; frame 3 holds it and, not being an append
        // frame that can be cut, is kept whole.
        assert_eq!(texts(&mut r)[0], "frame3");
    }

    #[test]
    fn the_replay_starts_at_the_acknowledged_point_inside_a_frame() {
        let mut r = Replay::new(60_000);
        let mut sent = Vec::new();
        for i in 0..10 {
            let (text, audio) = real_frame(i * 3200, 3200);
            r.audio(text, pcm(3200));
            sent.extend(audio);
        }
        // 350 ms is byte 11,200, 1,600 bytes into frame 3: cut at 1,596 (a multiple of 6).
        r.observe(&stopped("a", 350));
        r.observe(&completed("a"));
        let (frames, ms) = r.start_session();
        assert_eq!(frames.len(), 7);
        let first = decoded(frames[0].as_ref().unwrap());
        assert_eq!(first, sent[9600 + 1596..12800], "the tail of frame 3");
        let replayed: Vec<u8> = frames
            .iter()
            .flat_map(|f| decoded(f.as_ref().unwrap()))
            .collect();
        assert_eq!(replayed, sent[11196..], "everything from the cut on");
        assert_eq!(ms, 651, "650 ms and 2 samples, rounded up");
        // The new session counts from the cut: its 100 ms end 2 samples before 450 ms.
        let base = r.accounting().session_base;
        assert_eq!(base, 11196 / 2 * 62_500);
        r.observe(&stopped("b", 100));
        r.observe(&completed("b"));
        assert_eq!(r.accounting().acked, base + 100 * NS_PER_MS);
        // A second reconnect cuts again: 450 ms less 2 samples is byte 14,396, 1,596 bytes
        // (a multiple of 6) into frame 4.
        let (frames, _) = r.start_session();
        let replayed: Vec<u8> = frames
            .iter()
            .flat_map(|f| decoded(f.as_ref().unwrap()))
            .collect();
        assert_eq!(replayed, sent[14396..]);
    }

    #[test]
    fn a_cut_never_skips_an_unacknowledged_sample() {
        // Acknowledged points on every sample of a frame: the replay starts at most 2 samples
        // before it, never after.
        for sample in 0..40u64 {
            let mut r = Replay::new(60_000);
            let mut sent = Vec::new();
            for i in 0..2 {
                let (text, audio) = real_frame(i * 60, 60);
                r.audio(text, pcm(60));
                sent.extend(audio);
            }
            r.finish();
            r.ack(sample * 62_500);
            let (frames, _) = r.start_session();
            let replayed: Vec<u8> = frames
                .iter()
                .flat_map(|f| decoded(f.as_ref().unwrap()))
                .collect();
            let from = sent.len() - replayed.len();
            assert_eq!(replayed, sent[from..]);
            let acked_byte = sample as usize * 2;
            assert!(
                from <= acked_byte && acked_byte - from <= 4,
                "{sample}: {from}"
            );
        }
    }

    #[test]
    fn coded_frames_are_replayed_whole() {
        let mut r = Replay::new(60_000);
        for i in 0..4 {
            let (text, _) = real_frame(i * 100, 100);
            r.audio(
                text,
                FrameAudio::Coded {
                    duration_us: 20_000,
                },
            );
        }
        r.observe(&stopped("a", 30));
        r.observe(&completed("a"));
        let (frames, ms) = r.start_session();
        assert_eq!((frames.len(), ms), (3, 60));
        assert_eq!(r.unacked_ms(), 50);
    }

    #[test]
    fn offsets_map_through_a_new_session() {
        let mut r = Replay::new(60_000);
        for i in 0..10 {
            r.audio(frame(i), pcm(3200));
        }
        let (frames, ms) = r.start_session(); // the new session starts at frame 0
        assert_eq!((frames.len(), ms), (10, 1000));
        for i in 10..12 {
            r.audio(frame(i), pcm(3200));
        }
        r.observe(&stopped("b", 1000));
        r.observe(&completed("b"));
        assert_eq!(texts(&mut r), ["frame10", "frame11"]);
    }

    #[test]
    fn huge_offsets_after_a_reconnect_neither_overflow_nor_acknowledge() {
        for ms in [i64::MAX as u64, u64::MAX, u64::MAX / NS_PER_MS + 1, 1_201] {
            let mut r = Replay::new(60_000);
            for i in 0..10 {
                r.audio(frame(i), pcm(3200));
            }
            r.observe(&stopped("a", 300));
            r.observe(&completed("a"));
            let _ = r.start_session(); // the new session starts at 300 ms
            for i in 10..12 {
                r.audio(frame(i), pcm(3200));
            }
            // 900 ms were sent in this session; an offset past them is no acknowledgement.
            r.observe(&stopped("b", ms));
            r.observe(&completed("b"));
            assert_eq!(r.unacked_ms(), 900, "audio_end_ms {ms}");
            assert_eq!(texts(&mut r).len(), 9, "audio_end_ms {ms}");
        }
    }

    #[test]
    fn offsets_within_a_millisecond_past_the_end_acknowledge_the_end() {
        let mut r = Replay::new(60_000);
        r.audio(frame(0), pcm(31)); // under a millisecond
        r.observe(&stopped("a", 1));
        r.observe(&completed("a"));
        assert_eq!(r.unacked_ms(), 0);
    }

    #[test]
    fn acknowledgements_never_go_backwards() {
        let mut r = Replay::new(60_000);
        for i in 0..10 {
            r.audio(frame(i), pcm(3200));
        }
        r.observe(&stopped("a", 800));
        r.observe(&completed("a"));
        r.observe(&stopped("b", 200));
        r.observe(&completed("b"));
        assert_eq!(r.unacked_ms(), 200);
        assert_eq!(r.accounting().acked, 800 * NS_PER_MS);
    }

    #[test]
    fn the_window_counts_milliseconds_whatever_the_rate() {
        // 30 s at 8 kHz is 30 s, not the 60 s that 30 s of bytes at 16 kHz would hold.
        let mut r = Replay::new(30_000);
        for i in 0..600 {
            r.audio(
                frame(i),
                FrameAudio::Pcm {
                    bytes: 1600,
                    sample_rate: 8_000,
                },
            ); // 100 ms
        }
        assert_eq!(r.unacked_ms(), 30_000);
        assert_eq!(r.take_lost_ms(), 30_000);
    }

    #[test]
    fn tiny_frames_are_bounded_in_memory_and_counted_as_lost() {
        let mut r = Replay::new(1_000);
        for i in 0..100_000 {
            r.audio(frame(i), FrameAudio::Coded { duration_us: 0 });
        }
        let a = r.accounting();
        assert!(a.held_bytes <= MIN_HELD_BYTES, "{a:?}");
        r.audio(
            frame(0),
            FrameAudio::Coded {
                duration_us: 10_000,
            },
        );
        assert!(r.take_lost_ms() > 0 || r.unacked_ms() > 0);
    }

    #[test]
    fn manual_mode_replays_uncompleted_commits_and_the_tail() {
        let mut r = Replay::new(60_000);
        r.audio(frame(0), pcm(3200));
        r.commit();
        r.audio(frame(1), pcm(3200));
        r.commit();
        r.audio(frame(2), pcm(3200));
        r.observe(&completed("x"));
        assert_eq!(texts(&mut r), ["frame1", "commit", "frame2"]);
        r.observe(&completed("y"));
        assert_eq!(texts(&mut r), ["frame2"]);
    }

    #[test]
    fn a_commit_whose_audio_left_the_window_is_not_replayed() {
        let mut r = Replay::new(150);
        r.audio(frame(0), pcm(3200));
        r.commit();
        r.audio(frame(1), pcm(3200));
        assert_eq!(texts(&mut r), ["frame1"], "no empty commit");
        // The commit sent no more has no result coming: the next one is not taken for it.
        r.commit();
        r.audio(frame(2), pcm(3200));
        r.observe(&completed("y"));
        assert_eq!(texts(&mut r), ["frame2"]);
    }

    #[test]
    fn session_finished_acknowledges_what_was_sent_before_finish() {
        let mut r = Replay::new(60_000);
        r.audio(frame(0), pcm(3200));
        r.commit();
        r.audio(frame(1), pcm(3200));
        r.observe(&EventKind::SessionFinished);
        assert_eq!(
            r.unacked_ms(),
            200,
            "no finish was sent: a hostile server's"
        );
        r.finish();
        r.observe(&EventKind::SessionFinished);
        assert_eq!(r.unacked_ms(), 0);
        assert!(texts(&mut r).is_empty());
    }

    #[test]
    fn stopped_items_that_never_complete_are_bounded() {
        let mut r = Replay::new(60_000);
        r.audio(frame(0), pcm(3200));
        for i in 0..10_000 {
            r.observe(&stopped(&format!("item{i}"), 50));
        }
        assert_eq!(r.stopped_at.len(), MAX_STOPPED_ITEMS);
        r.observe(&completed("item9999"));
        assert_eq!(r.unacked_ms(), 50);
    }

    #[test]
    fn the_window_bounds_memory_and_counts_what_it_lets_go() {
        let mut r = Replay::new(500);
        for i in 0..8 {
            r.audio(frame(i), pcm(3200));
        }
        assert_eq!(r.unacked_ms(), 500);
        assert_eq!(texts(&mut r).len(), 5);
        assert_eq!(r.take_lost_ms(), 300);
        assert_eq!(r.take_lost_ms(), 0, "reported once");
        // Audio evicted but then acknowledged was not lost.
        for i in 8..12 {
            r.audio(frame(i), pcm(3200));
        }
        // The session started at frame 3 (the replay above), so its 900 ms end at 1200 ms.
        r.observe(&stopped("z", 900));
        r.observe(&completed("z"));
        assert_eq!(r.take_lost_ms(), 0);
    }

    #[test]
    fn server_offsets_map_to_the_device_timeline_across_gaps_and_sessions() {
        let mut r = Replay::new(60_000);
        r.device_jump(2_000);
        for i in 0..5 {
            r.audio(frame(i), pcm(3200)); // 100 ms each, captured from 2 s on
        }
        r.device_jump(9_000);
        r.audio(frame(5), pcm(3200));
        assert_eq!(r.device_ms(250), Some(2_250));
        assert_eq!(r.device_ms(550), Some(9_050));
        assert_eq!(r.device_ms(600), Some(9_100));
        // Past what was sent, or absurd: no position.
        assert_eq!(r.device_ms(700), None);
        assert_eq!(r.device_ms(u64::MAX), None);
        // A session.finished acknowledges everything; the next session's offsets restart.
        r.finish();
        r.observe(&EventKind::SessionFinished);
        assert_eq!(r.start_session().1, 0);
        r.device_jump(30_000);
        r.audio(frame(6), pcm(3200));
        assert_eq!(r.device_ms(40), Some(30_040));
    }

    #[test]
    fn replayed_audio_keeps_its_device_positions() {
        let mut r = Replay::new(60_000);
        r.device_jump(5_000);
        for i in 0..4 {
            r.audio(frame(i), pcm(3200));
        }
        r.observe(&stopped("a", 200));
        r.observe(&completed("a"));
        // The new session starts at the acknowledged point, 200 ms into the stream.
        let (frames, _) = r.start_session();
        assert_eq!(frames.len(), 2);
        assert_eq!(r.device_ms(0), Some(5_200));
        assert_eq!(r.device_ms(150), Some(5_350));
    }

    #[test]
    fn only_a_quiet_gate_with_every_opening_answered_settles_the_hangover() {
        let mut r = Replay::new(60_000);
        // No gate: never.
        r.audio(frame(0), pcm(3200));
        assert!(!r.settle());
        let mut r = Replay::new(0);
        r.device_jump(1_000);
        for i in 0..10 {
            r.audio(frame(i), pcm(3200));
        }
        // An utterance stopped but not completed: in flight.
        r.observe(&stopped("a", 600));
        assert!(!r.settle());
        r.observe(&completed("a"));
        assert_eq!(r.pending_ms(), 400, "the hangover after the speech");
        assert!(r.settle());
        assert_eq!(r.pending_ms(), 0);
        assert_eq!(r.take_lost_ms(), 0);
        // An opening the server gave no result at all: its audio stays pending.
        r.device_jump(9_000);
        r.audio(frame(10), pcm(3200));
        assert!(!r.settle());
        assert_eq!(r.pending_ms(), 100);
    }
}
