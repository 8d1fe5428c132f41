//! The replay buffer: audio that was sent but whose transcript has not come back yet, kept so
//! that a new connection can be given it again after the old one died.
//!
//! Offsets are in bytes of the caller's audio stream, counted across connections. The server
//! speaks in milliseconds of its own session's audio; `session_base` maps one to the other.

use std::collections::{HashMap, VecDeque};

use tungstenite::Utf8Bytes;

use crate::event::EventKind;

/// One thing sent that a new session needs again.
enum Sent {
    /// An append frame (kept as sent: replaying it costs no re-encoding) and where its audio
    /// starts in the stream.
    Audio {
        start: u64,
        bytes: u64,
        frame: Utf8Bytes,
    },
    /// A commit at this stream offset (manual mode).
    Commit { at: u64 },
}

pub(crate) struct Replay {
    sent: VecDeque<Sent>,
    /// Stream offset of the next audio byte.
    end: u64,
    /// Audio held in `sent`, in bytes.
    held: u64,
    /// The most audio `sent` may hold (the replay window).
    window: u64,
    /// Audio before this offset has its result.
    acked: u64,
    /// Where the current server session's audio starts in the stream.
    session_base: u64,
    /// Bytes per millisecond of audio (32 at 16 kHz).
    bytes_per_ms: u64,
    /// Offsets of commits still waiting for their result, oldest first.
    pending_commits: VecDeque<u64>,
    /// VAD mode: the stream offset where each stopped utterance ended, by item id.
    stopped_at: HashMap<String, u64>,
    /// Audio pushed out of the window before its result came: [start, end).
    evicted: Option<(u64, u64)>,
}

impl Replay {
    pub fn new(window_bytes: u64, bytes_per_ms: u64) -> Replay {
        Replay {
            sent: VecDeque::new(),
            end: 0,
            held: 0,
            window: window_bytes,
            acked: 0,
            session_base: 0,
            bytes_per_ms: bytes_per_ms.max(1),
            pending_commits: VecDeque::new(),
            stopped_at: HashMap::new(),
            evicted: None,
        }
    }

    pub fn set_bytes_per_ms(&mut self, bytes_per_ms: u64) {
        self.bytes_per_ms = bytes_per_ms.max(1);
    }

    /// Records an append frame as sent.
    pub fn audio(&mut self, frame: Utf8Bytes, bytes: u64) {
        self.sent.push_back(Sent::Audio {
            start: self.end,
            bytes,
            frame,
        });
        self.end += bytes;
        self.held += bytes;
        while self.held > self.window {
            match self.sent.pop_front() {
                Some(Sent::Audio { start, bytes, .. }) => {
                    self.held -= bytes;
                    let from = self.evicted.map_or(start, |(s, _)| s);
                    self.evicted = Some((from, start + bytes));
                }
                Some(Sent::Commit { .. }) => {}
                None => break,
            }
        }
    }

    /// Records a commit as sent.
    pub fn commit(&mut self) {
        self.pending_commits.push_back(self.end);
        self.sent.push_back(Sent::Commit { at: self.end });
    }

    /// Learns from a server event which audio has its result.
    pub fn observe(&mut self, kind: &EventKind) {
        match kind {
            // Everything sent before session.finish has had its result (or had no speech).
            EventKind::SessionFinished => {
                self.pending_commits.clear();
                self.ack(self.end);
            }
            EventKind::SpeechStopped {
                item_id: Some(id),
                audio_end_ms: Some(ms),
            } => {
                let at = self.session_base + ms.saturating_mul(self.bytes_per_ms);
                self.stopped_at.insert(id.clone(), at.min(self.end));
            }
            EventKind::Completed(c) => self.item_done(c.item_id.as_deref()),
            EventKind::Failed(f) => self.item_done(f.item_id.as_deref()),
            _ => {}
        }
    }

    fn item_done(&mut self, item_id: Option<&str>) {
        // Manual mode: results come back in commit order.
        let vad_end = item_id.and_then(|id| self.stopped_at.remove(id));
        let done_to = match vad_end {
            Some(at) => at,
            None => match self.pending_commits.pop_front() {
                Some(at) => at,
                None => return,
            },
        };
        self.ack(done_to);
    }

    fn ack(&mut self, to: u64) {
        if to <= self.acked {
            return;
        }
        self.acked = to;
        while let Some(front) = self.sent.front() {
            match front {
                Sent::Audio { start, bytes, .. } if start + bytes <= to => {
                    self.held -= bytes;
                    self.sent.pop_front();
                }
                // A commit at or before the acknowledged point has its result too.
                Sent::Commit { at } if *at <= to => {
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

    /// Audio that fell out of the window without a result: lost, in milliseconds. Reported
    /// once: the count restarts after this call.
    pub fn take_lost_ms(&mut self) -> u64 {
        match self.evicted.take() {
            Some((start, end)) => (end - start.max(self.acked)) / self.bytes_per_ms,
            None => 0,
        }
    }

    /// Audio sent whose result has not come back, in milliseconds.
    pub fn unacked_ms(&self) -> u64 {
        self.held / self.bytes_per_ms
    }

    /// What a new session must be sent again, in order: append frames as sent, and `None`
    /// where a commit goes. Starts a new server session at the first replayed byte.
    pub fn start_session(&mut self) -> (Vec<Option<Utf8Bytes>>, u64) {
        let first = self.sent.iter().find_map(|s| match s {
            Sent::Audio { start, .. } => Some(*start),
            Sent::Commit { .. } => None,
        });
        self.session_base = first.unwrap_or(self.end);
        self.stopped_at.clear();
        let frames = self
            .sent
            .iter()
            .map(|s| match s {
                Sent::Audio { frame, .. } => Some(frame.clone()),
                Sent::Commit { .. } => None,
            })
            .collect();
        (frames, self.held / self.bytes_per_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Completed;

    fn frame(n: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("frame{n}"))
    }

    fn completed(item: &str) -> EventKind {
        EventKind::Completed(Completed {
            item_id: Some(item.into()),
            ..Default::default()
        })
    }

    fn texts(r: &mut Replay) -> Vec<String> {
        r.start_session()
            .0
            .into_iter()
            .map(|f| f.map_or("commit".into(), |f| f.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn vad_keeps_the_audio_after_the_last_completed_utterance() {
        let mut r = Replay::new(1_000_000, 32);
        for i in 0..10 {
            r.audio(frame(i), 3200); // 100 ms each
        }
        r.observe(&EventKind::SpeechStopped {
            item_id: Some("a".into()),
            audio_end_ms: Some(350),
        });
        assert_eq!(
            r.unacked_ms(),
            1000,
            "nothing acknowledged before completed"
        );
        r.observe(&completed("a"));
        // Frames 0..=2 end at or before 350 ms; frame 3 straddles it and is kept.
        assert_eq!(texts(&mut r)[0], "frame3");
    }

    #[test]
    fn offsets_map_through_a_new_session() {
        let mut r = Replay::new(1_000_000, 32);
        for i in 0..10 {
            r.audio(frame(i), 3200);
        }
        let (frames, ms) = r.start_session(); // the new session starts at frame 0
        assert_eq!((frames.len(), ms), (10, 1000));
        for i in 10..12 {
            r.audio(frame(i), 3200);
        }
        r.observe(&EventKind::SpeechStopped {
            item_id: Some("b".into()),
            audio_end_ms: Some(1000),
        });
        r.observe(&completed("b"));
        assert_eq!(texts(&mut r), ["frame10", "frame11"]);
    }

    #[test]
    fn manual_mode_replays_uncompleted_commits_and_the_tail() {
        let mut r = Replay::new(1_000_000, 32);
        r.audio(frame(0), 3200);
        r.commit();
        r.audio(frame(1), 3200);
        r.commit();
        r.audio(frame(2), 3200);
        r.observe(&completed("x"));
        assert_eq!(texts(&mut r), ["frame1", "commit", "frame2"]);
        r.observe(&completed("y"));
        assert_eq!(texts(&mut r), ["frame2"]);
    }

    #[test]
    fn session_finished_acknowledges_everything_sent() {
        let mut r = Replay::new(1_000_000, 32);
        r.audio(frame(0), 3200);
        r.commit();
        r.audio(frame(1), 3200);
        r.observe(&EventKind::SessionFinished);
        assert_eq!(r.unacked_ms(), 0);
        assert!(texts(&mut r).is_empty());
    }

    #[test]
    fn the_window_bounds_memory_and_counts_what_it_lets_go() {
        let mut r = Replay::new(3200 * 5, 32);
        for i in 0..8 {
            r.audio(frame(i), 3200);
        }
        assert_eq!(r.unacked_ms(), 500);
        assert_eq!(texts(&mut r).len(), 5);
        assert_eq!(r.take_lost_ms(), 300);
        assert_eq!(r.take_lost_ms(), 0, "reported once");
        // Audio evicted but then acknowledged was not lost.
        for i in 8..12 {
            r.audio(frame(i), 3200);
        }
        r.observe(&EventKind::SpeechStopped {
            item_id: Some("z".into()),
            audio_end_ms: Some(1200),
        });
        r.observe(&completed("z"));
        assert_eq!(r.take_lost_ms(), 0);
    }
}
