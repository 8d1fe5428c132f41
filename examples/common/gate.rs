//! `--gate`: the speech gate's settings from the options, and its summary on stderr.

use qwen_asr_realtime::gate::{Accounting, GateConfig};
use qwen_asr_realtime::SessionConfig;

/// The gate the options ask for, built for `session` so that its hangover covers the
/// server's silence window (VAD mode) or its closes commit (manual mode).
pub fn config(o: &super::Options, session: &SessionConfig) -> GateConfig {
    let mut config = GateConfig::for_session(session);
    if let Some(ms) = o.gate_preroll_ms {
        config = config.pre_roll_ms(ms);
    }
    if let Some(ms) = o.gate_hangover_ms {
        config = config.hangover_ms(ms);
    }
    match o.gate_idle_ms {
        Some(0) => config = config.keep_session_open(),
        Some(ms) => config = config.idle_timeout_ms(Some(ms)),
        None => {}
    }
    config
}

/// The summary at the end: what was captured, what was sent, and the sessions it took.
pub fn summary(a: &Accounting) {
    eprintln!(
        "gate: captured {} ms, sent {} ms ({:.1} %), held back {} ms, dropped {} ms, \
         {} openings, {} session(s)",
        a.captured_ms(),
        a.sent_ms(),
        100.0 * a.sent_ms() as f64 / a.captured_ms().max(1) as f64,
        a.gated_ms(),
        a.dropped_ms(),
        a.gate.openings,
        a.sessions(),
    );
}
