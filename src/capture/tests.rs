//! The capture thread driven by a scripted source: overruns, a device that goes away, a
//! sink that closes, all of which a `file` PCM cannot produce.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::device::{alsa_error, Read, Source};
use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Chunk(Vec<i16>),
    Event(EventKind),
}

#[derive(Clone, Default)]
struct Sink {
    log: Arc<Mutex<Vec<Item>>>,
    /// `try_append` and `try_notify` answer Full this many more times.
    full: Arc<Mutex<u32>>,
    /// `try_append` answers Closed once this many chunks were taken.
    close_after: Option<usize>,
    /// `try_append` always answers Full.
    refuse_audio: bool,
}

impl Sink {
    fn items(&self) -> Vec<Item> {
        self.log.lock().unwrap().clone()
    }
}

impl AudioSink for Sink {
    fn try_append(&self, samples: &[i16]) -> std::result::Result<(), TryAppendError> {
        let mut full = self.full.lock().unwrap();
        if self.refuse_audio {
            return Err(TryAppendError::Full);
        }
        if *full > 0 {
            *full -= 1;
            return Err(TryAppendError::Full);
        }
        let mut log = self.log.lock().unwrap();
        let taken = log.iter().filter(|i| matches!(i, Item::Chunk(_))).count();
        if self.close_after.is_some_and(|n| taken >= n) {
            return Err(TryAppendError::Other(Error::Closed {
                code: None,
                reason: String::new(),
            }));
        }
        log.push(Item::Chunk(samples.to_vec()));
        Ok(())
    }

    fn try_notify(&self, kind: &EventKind) -> std::result::Result<(), TryAppendError> {
        let mut full = self.full.lock().unwrap();
        if *full > 0 {
            *full -= 1;
            return Err(TryAppendError::Full);
        }
        self.log.lock().unwrap().push(Item::Event(kind.clone()));
        Ok(())
    }
}

enum Step {
    Frames(usize),
    Overrun(u64),
    Fatal(i32),
}

/// Mono 16 kHz frames numbered 0, 1, 2, ... (mod 32768), then the steps' faults; once the
/// script is done it says so on `done` and idles.
struct Scripted {
    steps: std::vec::IntoIter<Step>,
    next: i16,
    done: Option<mpsc::Sender<()>>,
}

impl Source for Scripted {
    fn read(&mut self, out: &mut [i16]) -> Read {
        match self.steps.next() {
            Some(Step::Frames(n)) => {
                for o in &mut out[..n] {
                    *o = self.next;
                    self.next = self.next.wrapping_add(1) & 0x7fff;
                }
                Read::Frames(n)
            }
            Some(Step::Overrun(gap_ms)) => Read::Overrun { gap_ms },
            Some(Step::Fatal(errno)) => Read::Fatal(alsa_error(
                "scripted",
                alsa::Error::new("snd_pcm_readi", errno),
            )),
            None => {
                if let Some(done) = self.done.take() {
                    let _ = done.send(());
                }
                // Stands for snd_pcm_wait timing out on a silent device.
                std::thread::sleep(Duration::from_millis(1));
                Read::Idle
            }
        }
    }
}

const PERIOD: usize = 320; // 20 ms at 16 kHz

fn negotiated() -> Negotiated {
    Negotiated {
        device: "scripted".into(),
        rate: 16_000,
        channels: 1,
        format: SampleFormat::S16Le,
        period_frames: PERIOD as u64,
        buffer_frames: 10 * PERIOD as u64,
        output_rate: 16_000,
    }
}

/// Runs the script to its end, then stops the capture.
fn run(steps: Vec<Step>, config: CaptureConfig, sink: &Sink) -> (Capture, Result<()>) {
    let (tx, rx) = mpsc::channel();
    let source = Scripted {
        steps: steps.into_iter(),
        next: 0,
        done: Some(tx),
    };
    let mut capture = Capture::spawn(source, negotiated(), &config, sink.clone()).unwrap();
    // Either the script ends, or the thread ends first (fatal error, closed sink) and drops
    // the sender.
    let _ = rx.recv_timeout(Duration::from_secs(30));
    let r = capture.stop();
    (capture, r)
}

fn ramp(from: usize, n: usize) -> Vec<i16> {
    (from..from + n).map(|i| (i & 0x7fff) as i16).collect()
}

fn periods(n: usize) -> impl Iterator<Item = Step> {
    (0..n).map(|_| Step::Frames(PERIOD))
}

#[test]
fn an_overrun_is_reported_between_the_chunks_around_it_and_capture_goes_on() {
    let sink = Sink::default();
    let steps = periods(5)
        .chain([Step::Overrun(230)])
        .chain(periods(5))
        .chain([Step::Overrun(210)])
        .chain(periods(5))
        .collect();
    let (capture, r) = run(steps, CaptureConfig::default(), &sink);
    r.unwrap();
    assert_eq!(
        sink.items(),
        [
            Item::Chunk(ramp(0, 1600)),
            Item::Event(EventKind::CaptureOverrun {
                count: 1,
                gap_ms: 230
            }),
            Item::Chunk(ramp(1600, 1600)),
            Item::Event(EventKind::CaptureOverrun {
                count: 2,
                gap_ms: 210
            }),
            Item::Chunk(ramp(3200, 1600)),
        ]
    );
    assert_eq!(capture.stats().overruns, 2);
    assert_eq!(capture.stats().chunks_sent, 3);
}

#[test]
fn a_device_that_goes_away_ends_the_capture_with_capture_error() {
    let sink = Sink::default();
    let steps = periods(7).chain([Step::Fatal(libc::ENODEV)]).collect();
    let (capture, r) = run(steps, CaptureConfig::default(), &sink);
    assert!(!capture.is_running());
    match r {
        Err(Error::Capture { device, call, .. }) => {
            assert_eq!((device.as_str(), call), ("scripted", "snd_pcm_readi"));
        }
        other => panic!("{other:?}"),
    }
    let items = sink.items();
    // The full chunk, the captured partial chunk, then the error.
    assert_eq!(items[0], Item::Chunk(ramp(0, 1600)));
    assert_eq!(items[1], Item::Chunk(ramp(1600, 640)));
    match &items[2..] {
        [Item::Event(EventKind::CaptureError { message })] => {
            assert!(message.contains("snd_pcm_readi") && message.contains("scripted"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_closed_sink_ends_the_capture_quietly() {
    let sink = Sink {
        close_after: Some(2),
        ..Sink::default()
    };
    let (capture, r) = run(periods(20).collect(), CaptureConfig::default(), &sink);
    r.unwrap();
    assert!(!capture.is_running());
    assert_eq!(
        sink.items(),
        [Item::Chunk(ramp(0, 1600)), Item::Chunk(ramp(1600, 1600))]
    );
}

#[test]
fn a_full_sink_loses_the_oldest_audio_and_hears_about_it_at_the_gap() {
    // Queue of 3 chunks of 20 ms (one per period). The sink refuses 5 offers (of audio or
    // of the drop report); offers to a refusing sink back off (1, 2, 4, 8, 16 periods).
    let sink = Sink {
        full: Arc::new(Mutex::new(5)),
        ..Sink::default()
    };
    let config = CaptureConfig::default().chunk_ms(20).queue_ms(60);
    let (capture, r) = run(periods(60).collect(), config, &sink);
    r.unwrap();
    let items = sink.items();
    let first_chunk = items
        .iter()
        .position(|i| matches!(i, Item::Chunk(_)))
        .unwrap();
    let mut reported = 0;
    for item in &items[..first_chunk] {
        match item {
            Item::Event(EventKind::AudioDropped { ms, reason }) => {
                assert_eq!(reason, queue::DROP_REASON_QUEUE_FULL);
                reported += ms;
            }
            other => panic!("{other:?}"),
        }
    }
    // Losses add up into fewer reports than offers.
    assert!(first_chunk < 5, "{first_chunk} reports");
    // What arrived is continuous from where the loss ends, and the loss is what was reported.
    let chunks: Vec<_> = items[first_chunk..].to_vec();
    let Item::Chunk(c) = &chunks[0] else {
        unreachable!()
    };
    let first = c[0] as usize / PERIOD;
    assert!(first > 3);
    let want: Vec<_> = (first..60)
        .map(|c| Item::Chunk(ramp(c * PERIOD, PERIOD)))
        .collect();
    assert_eq!(chunks, want);
    assert_eq!(reported, first as u64 * 20);
    let stats = capture.stats();
    assert_eq!(stats.dropped_ms, reported);
    assert_eq!(stats.peak_queued_ms, 60);
}

#[test]
fn stopping_hands_over_the_partial_chunk() {
    let sink = Sink::default();
    let steps = periods(3).collect();
    let (capture, r) = run(steps, CaptureConfig::default(), &sink);
    r.unwrap();
    assert_eq!(sink.items(), [Item::Chunk(ramp(0, 960))]);
    assert_eq!(capture.stats().samples_sent, 960);
}

#[test]
fn audio_a_full_sink_never_took_is_reported_when_stopping() {
    let sink = Sink {
        refuse_audio: true,
        ..Sink::default()
    };
    let (capture, r) = run(periods(12).collect(), CaptureConfig::default(), &sink);
    r.unwrap();
    // 240 ms captured, nothing taken, not even at the stop.
    match sink.items().as_slice() {
        [Item::Event(EventKind::AudioDropped { ms: 240, .. })] => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(capture.stats().dropped_ms, 240);
}

#[test]
fn config_ranges_are_enforced_naming_the_field() {
    let cases = [
        (CaptureConfig::default().chunk_ms(10), "capture.chunk_ms"),
        (CaptureConfig::default().chunk_ms(501), "capture.chunk_ms"),
        (
            CaptureConfig::default().sample_rate(44_100),
            "capture.sample_rate",
        ),
        (CaptureConfig::default().period_ms(1), "capture.period_ms"),
        (CaptureConfig::default().buffer_ms(30), "capture.buffer_ms"),
        (CaptureConfig::default().queue_ms(50), "capture.queue_ms"),
        (CaptureConfig::default().device(""), "capture.device"),
        (CaptureConfig::default().device("a\0b"), "capture.device"),
        (
            CaptureConfig::default().device_format(48_000, 0),
            "capture.device_channels",
        ),
    ];
    for (config, want) in cases {
        match config.validate() {
            Err(Error::InvalidConfig { field, message }) => {
                assert_eq!(field, want, "{message}");
            }
            other => panic!("{config:?}: {other:?}"),
        }
    }
    assert!(CaptureConfig::default().chunk_ms(20).validate().is_ok());
    assert!(CaptureConfig::default().chunk_ms(500).validate().is_ok());
    assert!(CaptureConfig::default()
        .sample_rate(8000)
        .validate()
        .is_ok());
}

#[test]
fn negotiated_says_what_is_converted() {
    let mut n = negotiated();
    assert_eq!(
        n.to_string(),
        "scripted: 16000 Hz, 1 ch, S16_LE, period 320 frames (20.0 ms), buffer 3200 frames (200 ms)"
    );
    n.rate = 48_000;
    n.channels = 2;
    n.period_frames = 960;
    n.buffer_frames = 9600;
    assert!(n.converts());
    assert!(n
        .to_string()
        .ends_with("; downmixed to mono and resampled to 16000 Hz in software"));
}
