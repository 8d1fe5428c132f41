//! Opus against PCM on the uplink: bytes on the wire per audio second (each page base64 inside
//! its append's JSON, exactly as the library frames PCM), the encoder's CPU and instructions per
//! audio second, and its peak RSS. Run with `--help`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use qwen_asr_realtime::__fuzz::write_append_json;
use qwen_asr_realtime::audio::wav::WavReader;
use qwen_asr_realtime::opus::{OpusConfig, OpusStream};

const USAGE: &str = "\
opus_bench: Ogg Opus against PCM for the uplink, on one WAV file (16 kHz mono 16-bit)

usage:
  cargo run --release -p qwen-asr-bench --features opus --bin opus_bench -- [OPTIONS] [FILE.wav]

FILE defaults to examples/audio/hello_16k.wav. Prints the bytes on the wire per audio second
(append frames' JSON with base64 audio; PCM in 100 ms chunks), the encoder's CPU per audio
second over --passes passes, the peak RSS, and with --callgrind the instructions per audio
second (valgrind --tool=callgrind on this program, one pass subtracted from three) and an
estimate for a Cortex-A53 from them.

options:
  --bitrate BPS        Opus target bitrate (default 24000)
  --complexity N       0..=10 (default 5)
  --frame-ms N         10, 20, 40 or 60 (default 20)
  --page-ms N          audio per page and append (default 100)
  --cbr                constant bitrate instead of VBR
  --passes N           encode the file N times for the CPU figure (default 20)
  --callgrind          also count instructions (needs valgrind)
  --encode-only        just encode --passes times, print nothing (what --callgrind runs)
  -h, --help           this text
";

/// The PCM path's chunk, as the library's capture and the SDKs' examples send it.
const PCM_CHUNK_MS: usize = 100;

struct Options {
    file: PathBuf,
    config: OpusConfig,
    passes: u32,
    callgrind: bool,
    encode_only: bool,
}

fn parse() -> Result<Option<Options>, String> {
    let mut o = Options {
        file: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/audio/hello_16k.wav"
        )),
        config: OpusConfig::default(),
        passes: 20,
        callgrind: false,
        encode_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u32, String> {
            let v = args
                .next()
                .ok_or(format!("{name} needs a value (see --help)"))?;
            v.parse()
                .map_err(|_| format!("{name} takes a whole number, not {v:?} (see --help)"))
        };
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--bitrate" => o.config = o.config.bitrate_bps(num("--bitrate")?),
            "--complexity" => {
                let c = num("--complexity")?;
                o.config = o.config.complexity(u8::try_from(c).unwrap_or(u8::MAX));
            }
            "--frame-ms" => o.config = o.config.frame_ms(num("--frame-ms")?),
            "--page-ms" => o.config = o.config.page_ms(num("--page-ms")?),
            "--cbr" => o.config = o.config.vbr(false),
            "--passes" => o.passes = num("--passes")?.max(1),
            "--callgrind" => o.callgrind = true,
            "--encode-only" => o.encode_only = true,
            other if other.starts_with('-') => {
                return Err(format!("unknown option {other} (see --help)"))
            }
            file => o.file = PathBuf::from(file),
        }
    }
    o.config.validate().map_err(|e| e.to_string())?;
    Ok(Some(o))
}

fn read_wav(path: &PathBuf) -> Result<Vec<i16>, String> {
    let mut r = WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = r.spec();
    if spec.sample_rate != 16_000 || spec.channels != 1 {
        return Err(format!(
            "{}: {} Hz, {} channels; this benchmark takes 16 kHz mono",
            path.display(),
            spec.sample_rate,
            spec.channels
        ));
    }
    let mut pcm = Vec::new();
    let mut buf = [0i16; 4096];
    loop {
        let n = r.read_samples(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(pcm);
        }
        pcm.extend_from_slice(&buf[..n]);
    }
}

/// One session's worth: every page of `pcm` (pushed in 100 ms chunks, as capture hands them
/// over), with the byte counts of the pages and of their append frames.
#[derive(Default)]
struct Tally {
    pages: u64,
    page_bytes: u64,
    frame_bytes: u64,
}

fn encode(config: &OpusConfig, pcm: &[i16], serial: u32, tally: &mut Tally, frame: &mut String) {
    let mut stream = match OpusStream::new(config, 16_000, serial) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut count = |bytes: &[u8], tally: &mut Tally| {
        write_append_json(frame, bytes);
        tally.pages += 1;
        tally.page_bytes += bytes.len() as u64;
        tally.frame_bytes += frame.len() as u64;
    };
    for page in stream.headers().iter() {
        count(page.bytes(), tally);
    }
    for chunk in pcm.chunks(16 * PCM_CHUNK_MS) {
        match stream.push_pcm(chunk) {
            Ok(pages) => pages.iter().for_each(|p| count(p.bytes(), tally)),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    match stream.finish() {
        Ok(pages) => pages.iter().for_each(|p| count(p.bytes(), tally)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// CPU time (user + system) and peak RSS of this process.
fn usage() -> (Duration, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// Instructions of `opus_bench --encode-only --passes N` under callgrind.
fn callgrind(passes: u32, args: &[String]) -> Result<u64, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(me)
        .args(args)
        .args(["--encode-only", "--passes", &passes.to_string()])
        .output()
        .map_err(|e| format!("cannot run valgrind ({e}): apt-get install valgrind"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no instruction count in valgrind's output:\n{err}"))
}

fn main() {
    let o = match parse() {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let pcm = match read_wav(&o.file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let audio_s = pcm.len() as f64 / 16_000.0;
    let mut frame = String::new();
    let (cpu0, rss0) = usage();
    let mut tally = Tally::default();
    for pass in 0..o.passes {
        tally = Tally::default();
        encode(&o.config, &pcm, pass, &mut tally, &mut frame);
    }
    let (cpu1, rss1) = usage();
    if o.encode_only {
        return;
    }

    let mut pcm_frames = 0u64;
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    for chunk in bytes.chunks(32 * PCM_CHUNK_MS) {
        write_append_json(&mut frame, chunk);
        pcm_frames += frame.len() as u64;
    }
    let c = &o.config;
    println!(
        "file: {} ({audio_s:.2} s)\nopus: {} bit/s {}, complexity {}, {} ms frames, {} ms pages\n",
        o.file.display(),
        c.bitrate_bps,
        if c.vbr { "VBR" } else { "CBR" },
        c.complexity,
        c.frame_ms,
        c.page_ms
    );
    println!("{:<44} {:>10}", "bytes per audio second", "B/s");
    println!(
        "{:<44} {:>10.0}",
        "PCM append frames (100 ms chunks)",
        pcm_frames as f64 / audio_s
    );
    println!(
        "{:<44} {:>10.0}",
        "Opus append frames (one page each)",
        tally.frame_bytes as f64 / audio_s
    );
    println!(
        "{:<44} {:>10.0}",
        "  of which Ogg pages (headers included)",
        tally.page_bytes as f64 / audio_s
    );
    println!(
        "{:<44} {:>10.1}",
        "  appends per audio second",
        tally.pages as f64 / audio_s
    );
    println!(
        "{:<44} {:>10.1}",
        "PCM / Opus",
        pcm_frames as f64 / tally.frame_bytes as f64
    );
    let encoded_s = audio_s * f64::from(o.passes);
    println!(
        "\nencoder CPU: {:.2} ms per audio second ({} passes, {:.1} s of audio, user + system)",
        (cpu1 - cpu0).as_secs_f64() * 1000.0 / encoded_s,
        o.passes,
        encoded_s
    );
    println!(
        "peak RSS: {} KiB before encoding, {} KiB after ({:+} KiB)",
        rss0,
        rss1,
        rss1 as i64 - rss0 as i64
    );
    if o.callgrind {
        let pass_args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--callgrind")
            .collect();
        match (callgrind(1, &pass_args), callgrind(3, &pass_args)) {
            (Ok(one), Ok(three)) => {
                let per_s = three.saturating_sub(one) as f64 / (2.0 * audio_s);
                println!(
                    "instructions: {:.1} M per audio second (x86-64, callgrind)",
                    per_s / 1e6
                );
                // The estimate's assumptions: 1.2-1.4 A64 instructions per x86-64 one (no
                // AVX, NEON 128-bit only), an IPC of 0.7-1.0 for this in-order core, 1.2 GHz.
                let lo = per_s * 1.2 / 1.0 / 1.2e9 * 1000.0;
                let hi = per_s * 1.4 / 0.7 / 1.2e9 * 1000.0;
                println!(
                    "Cortex-A53 at 1.2 GHz (estimate): {lo:.0}-{hi:.0} ms of CPU per audio second \
                     ({:.0}-{:.0} % of one core)",
                    lo / 10.0,
                    hi / 10.0
                );
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("callgrind: {e}"),
        }
    }
}
