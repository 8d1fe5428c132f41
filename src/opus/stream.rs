//! One Ogg Opus logical stream (RFC 7845): headers, then pages of 16-bit mono PCM encoded by
//! libopus.

use super::ogg::{PageBuilder, FLAG_BOS, FLAG_EOS};
use super::{OpusConfig, OpusError};

/// Opus timestamps (granule positions, pre-skip) always count 48 kHz samples, whatever the
/// input rate (RFC 7845 section 4).
const GRANULE_RATE_HZ: u32 = 48_000;

/// Largest packet one frame can produce (RFC 6716 section 3.2.1: 1,275 bytes of frame data plus
/// the table-of-contents byte), rounded up.
const MAX_PACKET_BYTES: usize = 1_280;

/// What the `OpusTags` header names as the encoder; libopus's own version is appended.
const VENDOR_PREFIX: &str = concat!("qwen-asr-realtime ", env!("CARGO_PKG_VERSION"), " / ");

/// Where one page lies in a [`Pages`] buffer, and what it carries.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    audio_samples: u32,
    granule: u64,
    flags: u8,
}

/// One complete Ogg page, borrowed from the stream that made it.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    bytes: &'a [u8],
    span: Span,
    sample_rate: u32,
}

impl<'a> Page<'a> {
    /// The page, header included: what one append sends.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Input samples whose audio this page carries: every frame on it, except that the final
    /// page counts only the real samples of its frames, not the silence
    /// [`OpusStream::finish`] added. Over a whole stream these add up exactly to the samples
    /// given to [`OpusStream::push_pcm`]. Header pages carry 0.
    pub fn audio_samples(&self) -> u32 {
        self.span.audio_samples
    }

    /// [`audio_samples`](Self::audio_samples) in whole milliseconds, rounded down (exact for every
    /// page but a final page whose last frame was partial).
    pub fn audio_ms(&self) -> u64 {
        u64::from(self.span.audio_samples) * 1000 / u64::from(self.sample_rate)
    }

    /// The page's granule position: 48 kHz samples decoded from the stream's start through the
    /// last packet on this page, the pre-skip included; on the final page, the pre-skip plus
    /// the real audio only (so a decoder trims the padding).
    pub fn granule(&self) -> u64 {
        self.span.granule
    }

    /// True for the first page of the stream (`OpusHead`).
    pub fn is_bos(&self) -> bool {
        self.span.flags & FLAG_BOS != 0
    }

    /// True for the last page of the stream.
    pub fn is_eos(&self) -> bool {
        self.span.flags & FLAG_EOS != 0
    }
}

/// Pages a call produced, borrowed until the next call on the stream.
#[derive(Debug, Clone, Copy)]
pub struct Pages<'a> {
    bytes: &'a [u8],
    spans: &'a [Span],
    sample_rate: u32,
    padded_samples: u32,
}

impl<'a> Pages<'a> {
    /// How many pages.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when the call completed no page (the audio waits for the rest of its page).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The `i`th page, if there is one.
    pub fn get(&self, i: usize) -> Option<Page<'a>> {
        let span = *self.spans.get(i)?;
        Some(Page {
            bytes: &self.bytes[span.start..span.end],
            span,
            sample_rate: self.sample_rate,
        })
    }

    /// The pages in stream order.
    pub fn iter(&self) -> impl Iterator<Item = Page<'a>> + 'a {
        let (bytes, rate) = (self.bytes, self.sample_rate);
        self.spans.iter().map(move |&span| Page {
            bytes: &bytes[span.start..span.end],
            span,
            sample_rate: rate,
        })
    }

    /// Input samples' worth of silence that [`OpusStream::finish`] encoded after the real audio:
    /// the rest of the last partial frame, plus whole frames until the encoder's lookahead is
    /// flushed. Zero for every other call. Not counted in any page's audio, and cut off again by
    /// a decoder through the final granule position.
    pub fn padded_samples(&self) -> u32 {
        self.padded_samples
    }

    /// Total bytes of the pages.
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// An Ogg Opus encoder for one session: mono 16-bit PCM in, whole Ogg pages out.
///
/// Every session is its own logical stream: make a new `OpusStream` with a new serial for each
/// (after a reconnect too); its granule positions start from zero and its first two pages are
/// the headers from [`headers`](Self::headers), which must be the first two appends.
///
/// ```
/// use qwen_asr_realtime::opus::{OpusConfig, OpusStream};
/// let mut stream = OpusStream::new(&OpusConfig::default(), 16_000, 7)?;
/// let headers = stream.headers();
/// assert_eq!(headers.len(), 2);
/// let pages = stream.push_pcm(&[0i16; 1600])?; // 100 ms: one page with the default config
/// assert_eq!(pages.len(), 1);
/// assert_eq!(pages.get(0).unwrap().audio_ms(), 100);
/// let last = stream.finish()?;
/// assert!(last.get(last.len() - 1).unwrap().is_eos());
/// # Ok::<(), qwen_asr_realtime::opus::OpusError>(())
/// ```
pub struct OpusStream {
    encoder: libopus::Encoder,
    sample_rate: u32,
    serial: u32,
    /// Input samples per Opus frame.
    frame_samples: usize,
    /// Frames per page.
    frames_per_page: u32,
    /// 48 kHz samples per frame.
    frame_granule: u64,
    pre_skip: u16,
    /// Encoder delay in input samples: what `finish` must push through after the audio.
    lookahead: usize,
    /// The partial frame not yet encoded.
    frame: Vec<i16>,
    packet: Vec<u8>,
    pages: PageBuilder,
    /// Frames on the pending page.
    pending_frames: u32,
    /// Frames encoded so far.
    frames_encoded: u64,
    /// Real input samples pushed so far.
    pushed_samples: u64,
    /// Input samples already counted on a completed page.
    paged_samples: u64,
    headers: Vec<u8>,
    header_spans: [Span; 2],
    out: Vec<u8>,
    spans: Vec<Span>,
    finished: bool,
}

impl std::fmt::Debug for OpusStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusStream")
            .field("sample_rate", &self.sample_rate)
            .field("serial", &self.serial)
            .field("frame_samples", &self.frame_samples)
            .field("pre_skip", &self.pre_skip)
            .field("pushed_samples", &self.pushed_samples)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

fn encoder_error(call: &'static str) -> impl FnOnce(libopus::Error) -> OpusError {
    move |source| OpusError::Encoder { call, source }
}

impl OpusStream {
    /// A new logical stream with serial number `serial` for mono audio at `sample_rate` Hz
    /// (16,000 or 8,000, the rates the service accepts), encoded as `config` says.
    pub fn new(config: &OpusConfig, sample_rate: u32, serial: u32) -> Result<Self, OpusError> {
        config.validate()?;
        if sample_rate != 16_000 && sample_rate != 8_000 {
            return Err(OpusError::UnsupportedSampleRate(sample_rate));
        }
        let mut encoder = libopus::Encoder::new(
            sample_rate,
            libopus::Channels::Mono,
            libopus::Application::Voip,
        )
        .map_err(encoder_error("opus_encoder_create"))?;
        encoder
            .set_bitrate(libopus::Bitrate::Bits(config.bitrate_bps as i32))
            .map_err(encoder_error("OPUS_SET_BITRATE"))?;
        encoder
            .set_complexity(config.complexity.into())
            .map_err(encoder_error("OPUS_SET_COMPLEXITY"))?;
        encoder
            .set_vbr(config.vbr)
            .map_err(encoder_error("OPUS_SET_VBR"))?;
        let lookahead = encoder
            .get_lookahead()
            .map_err(encoder_error("OPUS_GET_LOOKAHEAD"))?;
        // libopus reports its delay in input samples; a negative or absurd value would be a
        // library bug, and a pre-skip must fit 16 bits.
        let lookahead = usize::try_from(lookahead).unwrap_or(0);
        let ratio = (GRANULE_RATE_HZ / sample_rate) as usize;
        let pre_skip = u16::try_from(lookahead * ratio).unwrap_or(u16::MAX);
        let frame_samples = (sample_rate * config.frame_ms / 1000) as usize;

        let mut headers = Vec::new();
        let mut pages = PageBuilder::new(serial);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&sample_rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0: mono or stereo, no channel table
        pages.push_packet(&head);
        let head_end = pages.write_page(FLAG_BOS, 0, &mut headers);

        let vendor = format!("{VENDOR_PREFIX}{}", libopus::version());
        let mut tags = Vec::with_capacity(16 + vendor.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        pages.push_packet(&tags);
        let tags_len = pages.write_page(0, 0, &mut headers);
        let header_span = |start, end, flags| Span {
            start,
            end,
            audio_samples: 0,
            granule: 0,
            flags,
        };

        // The largest page the settings allow, reserved now so that the first loud passage
        // does not allocate on the audio path.
        let frames_per_page = config.page_ms / config.frame_ms;
        let max_body = frames_per_page as usize * MAX_PACKET_BYTES;
        pages.reserve(max_body);
        let out =
            Vec::with_capacity(super::ogg::HEADER_BYTES + super::ogg::MAX_SEGMENTS + max_body);

        Ok(OpusStream {
            encoder,
            sample_rate,
            serial,
            frame_samples,
            frames_per_page,
            frame_granule: (frame_samples * ratio) as u64,
            pre_skip,
            lookahead,
            frame: Vec::with_capacity(frame_samples),
            packet: vec![0; MAX_PACKET_BYTES],
            pages,
            pending_frames: 0,
            frames_encoded: 0,
            pushed_samples: 0,
            paged_samples: 0,
            header_spans: [
                header_span(0, head_end, FLAG_BOS),
                header_span(head_end, head_end + tags_len, 0),
            ],
            headers,
            out,
            spans: Vec::with_capacity(4),
            finished: false,
        })
    }

    /// The two header pages, `OpusHead` (beginning of stream) and `OpusTags`: the first two
    /// appends of the session, each on its own. The same bytes on every call.
    pub fn headers(&self) -> Pages<'_> {
        Pages {
            bytes: &self.headers,
            spans: &self.header_spans,
            sample_rate: self.sample_rate,
            padded_samples: 0,
        }
    }

    /// Encodes `pcm` (mono, at the stream's sample rate) and returns the pages it completed:
    /// none while a page's worth of audio is not there yet. A partial frame waits for the next
    /// call. Does not allocate once the buffers have grown to the stream's largest page.
    pub fn push_pcm(&mut self, pcm: &[i16]) -> Result<Pages<'_>, OpusError> {
        if self.finished {
            return Err(OpusError::Finished);
        }
        self.out.clear();
        self.spans.clear();
        let mut rest = pcm;
        while !rest.is_empty() {
            let take = (self.frame_samples - self.frame.len()).min(rest.len());
            self.frame.extend_from_slice(&rest[..take]);
            self.pushed_samples += take as u64;
            rest = &rest[take..];
            if self.frame.len() == self.frame_samples {
                self.encode_frame()?;
                if self.pending_frames == self.frames_per_page {
                    self.complete_page(0);
                }
            }
        }
        Ok(self.pages_out(0))
    }

    /// Ends the stream: pads the partial frame with silence, encodes silence until the encoder's
    /// lookahead has come out, and returns the last page(s), the final one flagged end of stream
    /// with a granule position that trims the padding. How much silence was added is in
    /// [`Pages::padded_samples`]. Afterwards every call but [`headers`](Self::headers) fails
    /// with [`OpusError::Finished`].
    pub fn finish(&mut self) -> Result<Pages<'_>, OpusError> {
        if self.finished {
            return Err(OpusError::Finished);
        }
        self.out.clear();
        self.spans.clear();
        let needed = self.pushed_samples + self.lookahead as u64;
        let mut padded = 0u64;
        while self.frames_encoded * self.frame_samples as u64 + (self.frame.len() as u64) < needed
            || !self.frame.is_empty()
        {
            let fill = self.frame_samples - self.frame.len();
            self.frame.resize(self.frame_samples, 0);
            padded += fill as u64;
            // No page is completed here: a page full of padding would carry a granule position
            // beyond the final one, which must not go backwards. The last page takes these one
            // or two extra frames (its segment limit is still checked in `encode_frame`).
            self.encode_frame()?;
        }
        if self.pages.is_empty() {
            // Everything already sits on completed pages (only if the lookahead were zero):
            // the end of stream still needs a page of its own, and one silent frame makes it.
            self.frame.resize(self.frame_samples, 0);
            padded += self.frame_samples as u64;
            self.encode_frame()?;
        }
        self.complete_page(FLAG_EOS);
        self.finished = true;
        Ok(self.pages_out(u32::try_from(padded).unwrap_or(u32::MAX)))
    }

    /// Completes the page being filled, if it holds a frame, and returns it: for audio that
    /// must be on the wire now (before a commit), without waiting for a full page. A page may
    /// hold fewer frames than [`OpusConfig::page_ms`] says. A partial frame (less than
    /// [`OpusConfig::frame_ms`] of audio) cannot be encoded without padding it, which would
    /// put silence in the middle of the stream: it stays and goes out with the audio pushed
    /// next, or padded by [`finish`](Self::finish).
    pub fn flush(&mut self) -> Result<Pages<'_>, OpusError> {
        if self.finished {
            return Err(OpusError::Finished);
        }
        self.out.clear();
        self.spans.clear();
        if self.pending_frames > 0 {
            self.complete_page(0);
        }
        Ok(self.pages_out(0))
    }

    /// The logical stream's serial number.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The input sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The header's pre-skip: 48 kHz samples a decoder drops at the start (the encoder's delay).
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Input samples pushed so far.
    pub fn pushed_samples(&self) -> u64 {
        self.pushed_samples
    }

    /// Input samples pushed but not yet on a returned page (a partial frame, and the frames of
    /// the page being filled): audio that is lost if the stream is dropped without
    /// [`finish`](Self::finish).
    pub fn unpaged_samples(&self) -> u64 {
        self.pushed_samples - self.paged_samples
    }

    /// True once [`finish`](Self::finish) has run.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn encode_frame(&mut self) -> Result<(), OpusError> {
        let n = self
            .encoder
            .encode(&self.frame, &mut self.packet)
            .map_err(encoder_error("opus_encode"))?;
        self.frame.clear();
        if !self.pages.fits(n) {
            // Unreachable with the validated settings (at most 50 frames of at most 6 segments
            // per page), kept so that a page never lists more than 255 segments.
            self.complete_page(0);
        }
        self.pages.push_packet(&self.packet[..n]);
        self.pending_frames += 1;
        self.frames_encoded += 1;
        Ok(())
    }

    /// Writes the pending packets as a page into `out`.
    fn complete_page(&mut self, flags: u8) {
        let eos = flags & FLAG_EOS != 0;
        let encoded_to = self.frames_encoded * self.frame_samples as u64;
        let audio_to = if eos {
            self.pushed_samples
        } else {
            encoded_to.min(self.pushed_samples)
        };
        let ratio = u64::from(GRANULE_RATE_HZ / self.sample_rate);
        let granule = if eos {
            u64::from(self.pre_skip) + self.pushed_samples * ratio
        } else {
            self.frames_encoded * self.frame_granule
        };
        let start = self.out.len();
        self.pages.write_page(flags, granule, &mut self.out);
        self.spans.push(Span {
            start,
            end: self.out.len(),
            audio_samples: u32::try_from(audio_to - self.paged_samples).unwrap_or(u32::MAX),
            granule,
            flags,
        });
        self.paged_samples = audio_to;
        self.pending_frames = 0;
    }

    fn pages_out(&self, padded_samples: u32) -> Pages<'_> {
        Pages {
            bytes: &self.out,
            spans: &self.spans,
            sample_rate: self.sample_rate,
            padded_samples,
        }
    }
}
