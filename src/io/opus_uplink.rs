//! The Opus uplink: the I/O thread's encoder, for sessions whose PCM the library encodes
//! (`SessionConfig::opus`, feature `opus`). Without the feature, or in a session that does
//! not encode, every call here is the plain PCM path.
//!
//! One owner: the I/O thread holds the only encoder, and one Ogg Opus logical stream per
//! server session. Encoding on the caller's thread would need the encoder behind a lock that
//! the capture thread, blocking appends and the I/O thread's replay all contend for; and the
//! stream must restart exactly when a connection does, which only this thread knows. So an
//! append in such a session is cut into PCM append frames as in a PCM session, but always
//! queued (never written straight to the socket), and here each frame:
//!
//! - enters the replay window as the PCM it carries, never as Opus: after a reconnect the
//!   replayed PCM is encoded again into a new stream (new serial, fresh headers, granule
//!   positions from zero), which is a valid stream whatever the service does with pre-skip,
//!   at about 5 ms of x86 CPU per replayed audio second. Audio still in the encoder (a page
//!   being filled) when the link dies is in the window too, so nothing is lost with it;
//! - is decoded back from its base64 and pushed into the stream; the whole pages it completes
//!   go out, one per append, the stream's two header pages before the first.
//!
//! The accounting (`Stats`, the backlog, `client.audio_dropped`) counts the PCM's
//! milliseconds, as in a PCM session.

use tungstenite::Utf8Bytes;

use crate::error::Error;
use crate::io::link::Link;
use crate::io::outbox::Shared;

/// The I/O thread's encoder state, carried across connections.
pub(crate) struct OpusUplink {
    /// The stream of the current server session; `None` until its first audio, so that a
    /// session (or a connection) that never gets audio never gets headers either.
    #[cfg(feature = "opus")]
    stream: Option<crate::opus::OpusStream>,
    /// The last stream's serial: the next one differs from it.
    #[cfg(feature = "opus")]
    last_serial: Option<u32>,
    /// Reused for each frame's decoded PCM.
    #[cfg(feature = "opus")]
    pcm_bytes: Vec<u8>,
    #[cfg(feature = "opus")]
    samples: Vec<i16>,
}

impl OpusUplink {
    pub fn new() -> OpusUplink {
        OpusUplink {
            #[cfg(feature = "opus")]
            stream: None,
            #[cfg(feature = "opus")]
            last_serial: None,
            #[cfg(feature = "opus")]
            pcm_bytes: Vec::new(),
            #[cfg(feature = "opus")]
            samples: Vec::new(),
        }
    }

    /// A connection or a server session starts: the audio that follows goes into a new
    /// logical stream. The I/O thread calls this whenever one starts (a reconnect, a new
    /// session). What the old stream still held is not lost: the replay window has it as PCM.
    pub fn new_stream(&mut self) {
        #[cfg(feature = "opus")]
        {
            self.stream = None;
        }
    }

    /// Sends one queued append frame of `audio_bytes`: as it is, or, when the session
    /// encodes, as the Ogg pages its audio completes. `Err` hands the frame back untouched
    /// when the socket is full.
    pub fn send_frame(
        &mut self,
        link: &mut Link,
        shared: &Shared,
        text: Utf8Bytes,
        audio_bytes: u64,
    ) -> Result<(), Utf8Bytes> {
        #[cfg(feature = "opus")]
        if shared.encodes() {
            if link.is_write_blocked() && !link.flush() {
                return Err(text);
            }
            let mut wire = Vec::new();
            let failure = self
                .encode(shared, &text, &mut wire)
                .err()
                .map(|e| e.to_string());
            link.send_encoded(text, shared.frame_audio(audio_bytes), wire, failure);
            return Ok(());
        }
        link.try_send(text, shared.frame_audio(audio_bytes))
    }

    /// Before a commit: writes the page being filled, so that the audio committed is on the
    /// wire first. Less than one Opus frame (20 ms by default) cannot be encoded without
    /// padding it with silence in mid-stream: it stays in the encoder and goes out with the
    /// next audio, so the service counts it in the next utterance (or, at the end, in the
    /// final page). `Err` is why the link must be given up.
    pub fn before_commit(&mut self, link: &mut Link) -> Result<(), String> {
        #[cfg(feature = "opus")]
        {
            let mut wire = Vec::new();
            self.flush(&mut wire).map_err(|e| e.to_string())?;
            write_all(link, wire)?;
        }
        let _ = link;
        Ok(())
    }

    /// Before `session.finish`: ends the stream with its end-of-stream page (the audio left
    /// in the encoder, padded to a whole frame that the page's granule position trims).
    pub fn before_finish(&mut self, link: &mut Link) -> Result<(), String> {
        #[cfg(feature = "opus")]
        {
            let mut wire = Vec::new();
            self.end(&mut wire).map_err(|e| e.to_string())?;
            write_all(link, wire)?;
        }
        let _ = link;
        Ok(())
    }

    /// What to send a new session for one entry of the replay (`None` is a commit): the frame
    /// itself, or the pages its PCM completes in the new stream (call
    /// [`new_stream`](Self::new_stream) first); for a commit, the pages that can be
    /// completed, then the commit.
    pub fn replay_wire(
        &mut self,
        shared: &Shared,
        frame: Option<Utf8Bytes>,
    ) -> Result<Vec<Utf8Bytes>, Error> {
        let commit = || Utf8Bytes::from(crate::protocol::commit_json().0);
        #[cfg(feature = "opus")]
        if shared.encodes() {
            let mut wire = Vec::new();
            let is_commit = frame.is_none();
            match frame {
                Some(text) => self.encode(shared, &text, &mut wire)?,
                None => self.flush(&mut wire)?,
            }
            let mut out: Vec<Utf8Bytes> = wire.into_iter().map(|(t, _)| t).collect();
            if is_commit {
                out.push(commit());
            }
            return Ok(out);
        }
        let _ = shared;
        Ok(vec![frame.unwrap_or_else(commit)])
    }

    /// What a resumed session sends before `session.finish`: the end-of-stream page, if a
    /// stream is open.
    pub fn finish_wire(&mut self) -> Result<Vec<Utf8Bytes>, Error> {
        #[cfg(feature = "opus")]
        {
            let mut wire = Vec::new();
            self.end(&mut wire)?;
            Ok(wire.into_iter().map(|(t, _)| t).collect())
        }
        #[cfg(not(feature = "opus"))]
        Ok(Vec::new())
    }
}

#[cfg(feature = "opus")]
impl OpusUplink {
    /// Decodes the PCM of the append frame `pcm_text` and pushes it into the stream, starting
    /// one (headers first) if none is open; the completed pages go to `wire`.
    fn encode(
        &mut self,
        shared: &Shared,
        pcm_text: &str,
        wire: &mut Vec<(Utf8Bytes, u64)>,
    ) -> Result<(), Error> {
        use base64::Engine as _;
        let b64 = append_payload(pcm_text)
            .ok_or_else(|| Error::Internal("a queued append frame without its audio".into()))?;
        self.pcm_bytes.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(b64, &mut self.pcm_bytes)
            .map_err(|e| Error::Internal(format!("a queued append frame's base64: {e}")))?;
        self.samples.clear();
        self.samples.extend(
            self.pcm_bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        if self.stream.is_none() {
            let config = shared.opus_config().ok_or_else(|| {
                Error::Internal("Opus encoding without an encoder configuration".into())
            })?;
            let serial = fresh_serial(self.last_serial);
            let stream = crate::opus::OpusStream::new(&config, shared.sample_rate(), serial)
                .map_err(Error::Opus)?;
            self.last_serial = Some(serial);
            push_pages(stream.headers(), wire);
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        match stream.push_pcm(&self.samples) {
            Ok(pages) => {
                push_pages(pages, wire);
                Ok(())
            }
            Err(e) => {
                // Its state is unknown now: the next audio starts a new stream (on the new
                // connection that this failure leads to).
                self.stream = None;
                Err(Error::Opus(e))
            }
        }
    }

    /// Completes the page being filled, if a stream is open.
    fn flush(&mut self, wire: &mut Vec<(Utf8Bytes, u64)>) -> Result<(), Error> {
        if let Some(stream) = self.stream.as_mut() {
            match stream.flush() {
                Ok(pages) => push_pages(pages, wire),
                Err(e) => {
                    self.stream = None;
                    return Err(Error::Opus(e));
                }
            }
        }
        Ok(())
    }

    /// Ends the open stream, if any, with its end-of-stream page; audio after it would start
    /// a new stream.
    fn end(&mut self, wire: &mut Vec<(Utf8Bytes, u64)>) -> Result<(), Error> {
        if let Some(mut stream) = self.stream.take() {
            let pages = stream.finish().map_err(Error::Opus)?;
            push_pages(pages, wire);
        }
        Ok(())
    }
}

/// Writes encoded frames on the link (not into the replay: their audio is there as PCM).
#[cfg(feature = "opus")]
fn write_all(link: &mut Link, wire: Vec<(Utf8Bytes, u64)>) -> Result<(), String> {
    for (text, _) in wire {
        link.write(tungstenite::Message::Text(text))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One append frame per page, with the page's milliseconds of audio.
#[cfg(feature = "opus")]
fn push_pages(pages: crate::opus::Pages<'_>, wire: &mut Vec<(Utf8Bytes, u64)>) {
    for page in pages.iter() {
        let mut text = String::new();
        crate::protocol::write_append_json(&mut text, page.bytes());
        wire.push((Utf8Bytes::from(text), page.audio_ms()));
    }
}

/// The base64 of an append frame as the append path writes it (`…"audio":"<base64>"}`).
#[cfg(feature = "opus")]
fn append_payload(text: &str) -> Option<&str> {
    const AUDIO_KEY: &str = "\"audio\":\"";
    let at = text.find(AUDIO_KEY)? + AUDIO_KEY.len();
    text.get(at..)?.strip_suffix("\"}")
}

/// A serial for a new logical stream: random (RFC 3533 asks for serials unlikely to repeat),
/// and never the previous stream's, so that a server can tell the streams apart.
#[cfg(feature = "opus")]
fn fresh_serial(last: Option<u32>) -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let mut n = 0u64;
    loop {
        let serial = (RandomState::new().hash_one(n) >> 32) as u32;
        if Some(serial) != last {
            return serial;
        }
        n += 1;
    }
}
