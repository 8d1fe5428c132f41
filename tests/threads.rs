//! No thread the library starts outlives its conversation: after close, after drop, after an
//! end_session that timed out, and with a callback thread. One test in its own binary, so
//! that no other test's threads are counted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use qwen_asr_emulator::{EmulatorConfig, Fault, FaultAction};
use qwen_asr_realtime::{Callback, Conversation, Event, SessionConfig};

struct Quiet;
impl Callback for Quiet {
    fn on_event(&mut self, _: &Event) {}
}

fn ours() -> Vec<String> {
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with("qwen-"))
        .collect()
}

/// Our threads matching `pred` still listed after a joined thread had a second to leave
/// /proc: pthread_join returns a moment before the kernel drops the task entry (up to ~4 ms
/// under qemu-user). A thread that was never joined stays listed and still fails.
fn lingering(pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let hits: Vec<String> = ours().into_iter().filter(|n| pred(n)).collect();
        if hits.is_empty() || Instant::now() >= deadline {
            return hits;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn no_thread_outlives_its_conversation() {
    assert!(lingering(|_| true).is_empty(), "{:?}", ours());
    {
        let emu = start_emulator(EmulatorConfig::default());
        // Closed explicitly.
        let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
        let cb = conv.spawn_callback(Quiet).unwrap();
        conv.append_pcm(&burst(16000, 300, 0)).unwrap();
        conv.close();
        assert!(lingering(|n| n == "qwen-asr-io").is_empty(), "{:?}", ours());
        drop(cb);
        assert!(
            lingering(|n| n == "qwen-asr-callback").is_empty(),
            "{:?}",
            ours()
        );

        // Dropped mid-stream, with audio queued and a callback still attached.
        let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
        let cb = conv.spawn_callback(Quiet).unwrap();
        conv.append_pcm(&utterances(16000, 1)).unwrap();
        drop(conv);
        drop(cb);
        assert!(
            lingering(|n| n.starts_with("qwen-asr")).is_empty(),
            "{:?}",
            ours()
        );

        // Finished normally.
        let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
        conv.append_pcm(&burst(16000, 300, 0)).unwrap();
        conv.commit().unwrap();
        conv.end_session(WAIT).unwrap();
        assert!(
            lingering(|n| n.starts_with("qwen-asr")).is_empty(),
            "{:?}",
            ours()
        );
    }
    {
        // end_session against a stalled server: it times out, and still joins.
        let config = EmulatorConfig {
            faults: vec![Fault::AfterAppends {
                n: 1,
                action: FaultAction::Stall,
            }],
            ..Default::default()
        };
        let emu = start_emulator(config);
        let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
        conv.append_pcm(&burst(16000, 100, 0)).unwrap();
        assert!(conv.end_session(Duration::from_millis(200)).is_err());
        assert!(
            lingering(|n| n.starts_with("qwen-asr")).is_empty(),
            "{:?}",
            ours()
        );
        drop(conv);
    }
    // The emulators are gone too: their threads were joined on drop.
    assert!(lingering(|_| true).is_empty(), "{:?}", ours());
}
