//! Streams a 16-bit mono WAV file (8 or 16 kHz) to Qwen-ASR-Realtime and prints what comes
//! back. Run with `--help` for the options.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use qwen_asr_realtime::audio::wav::WavReader;
use qwen_asr_realtime::Conversation;

const USAGE: &str = "\
transcribe_file: stream a WAV file to Qwen-ASR-Realtime and print the transcripts

usage: cargo run --example transcribe_file -- [OPTIONS] FILE.wav

FILE.wav must be 16-bit PCM mono at 16000 or 8000 Hz (convert others with
`sox in.wav -r 16000 -c 1 -b 16 out.wav`).

options:
  --realtime         pace the audio at real time (default: as fast as the socket takes it)
";

fn main() {
    let usage = format!("{USAGE}{}{}", common::GATE_OPTIONS, common::COMMON_OPTIONS);
    let opts = common::parse_args(&usage, &["--realtime", "--gate"], &[]);
    let [path] = opts.positional.as_slice() else {
        eprintln!("error: give exactly one WAV file (see --help)");
        std::process::exit(2);
    };
    let mut wav = WavReader::open(path).unwrap_or_else(|e| common::fail(path, e));
    let spec = wav.spec();
    if spec.channels != 1 || !matches!(spec.sample_rate, 8000 | 16000) {
        common::fail(
            path,
            format!(
                "{} Hz with {} channels; 16-bit mono at 16000 or 8000 Hz is needed \
                 (convert with `sox {path} -r 16000 -c 1 -b 16 out.wav`)",
                spec.sample_rate, spec.channels
            ),
        );
    }
    let config = common::session_config(&opts, spec.sample_rate);
    let (conv, _emulator) =
        common::connect(&opts, &config).unwrap_or_else(|e| common::fail("connect", e));
    let printer = common::Printer::spawn(&conv, opts.json);
    let outcome = stream(&conv, &mut wav, &opts, path);
    common::finish(conv, printer, outcome);
}

/// Streams the file, then ends the session; the error says what failed.
fn stream(
    conv: &Conversation,
    wav: &mut WavReader<impl Read>,
    opts: &common::Options,
    path: &str,
) -> Result<(), String> {
    let spec = wav.spec();
    // One chunk's worth of bytes, reused for the whole file: the file is streamed, not loaded.
    let chunk_samples = (spec.sample_rate * opts.chunk_ms / 1000) as usize;
    let mut buf = vec![0i16; chunk_samples];
    let start = Instant::now();
    let mut sent_ms = 0u64;
    let mut gate = gate::start(conv, opts)?;
    loop {
        let n = wav
            .read_samples(&mut buf)
            .map_err(|e| common::failure(path, e))?;
        if n == 0 {
            break;
        }
        match &mut gate {
            Some(g) => gate::append(g, &buf[..n])?,
            None => conv
                .append_pcm(&buf[..n])
                .map_err(|e| common::failure("append", e))?,
        }
        sent_ms += n as u64 * 1000 / u64::from(spec.sample_rate);
        if opts.realtime {
            let due = start + Duration::from_millis(sent_ms);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    if let Some(missing) = wav.truncated() {
        let bytes_per_ms = u64::from(spec.sample_rate) * 2 / 1000;
        eprintln!(
            "warning: {path} is truncated: its header announces {} ms more audio than the file \
             holds; the {sent_ms} ms it holds were sent",
            missing / bytes_per_ms.max(1)
        );
    }
    match &mut gate {
        // The gate's close commits in manual mode.
        Some(g) => gate::finish(g)?,
        None if opts.manual && sent_ms > 0 => {
            conv.commit().map_err(|e| common::failure("commit", e))?
        }
        None => {}
    }
    common::end_session_then(conv, || {
        if let Some(g) = &gate {
            gate::summary(g);
        }
    })
}

/// `--gate`: the speech gate in front of the conversation.
#[cfg(feature = "gate")]
mod gate {
    use qwen_asr_realtime::gate::GatedSender;
    use qwen_asr_realtime::Conversation;

    pub fn start(
        conv: &Conversation,
        opts: &crate::common::Options,
    ) -> Result<Option<GatedSender>, String> {
        if !opts.gate {
            return Ok(None);
        }
        let session = crate::common::session_config(opts, conv.audio_sender().sample_rate());
        let config = crate::common::gate::config(opts, &session);
        GatedSender::new(conv.audio_sender(), config)
            .map(Some)
            .map_err(|e| crate::common::failure("gate", e))
    }

    pub fn append(g: &mut GatedSender, pcm: &[i16]) -> Result<(), String> {
        g.append_pcm(pcm)
            .map_err(|e| crate::common::failure("append", e))
    }

    pub fn finish(g: &mut GatedSender) -> Result<(), String> {
        g.finish().map_err(|e| crate::common::failure("gate", e))
    }

    /// The gate's summary on stderr, once the session has ended.
    pub fn summary(g: &GatedSender) {
        crate::common::gate::summary(&g.accounting());
    }
}

/// Without the feature `--gate` is refused, and nothing else changes.
#[cfg(not(feature = "gate"))]
mod gate {
    use qwen_asr_realtime::Conversation;

    pub enum Never {}

    pub fn start(
        _conv: &Conversation,
        opts: &crate::common::Options,
    ) -> Result<Option<Never>, String> {
        crate::common::refuse_gate(opts)?;
        Ok(None)
    }

    pub fn append(g: &mut Never, _pcm: &[i16]) -> Result<(), String> {
        match *g {}
    }

    pub fn finish(g: &mut Never) -> Result<(), String> {
        match *g {}
    }

    pub fn summary(g: &Never) {
        match *g {}
    }
}
