//! What the binary's `--record DIR` writes: each session's audio and a summary of what the
//! emulator saw, for a checker (a script, `opusdec`) that compares them with what was sent.

use std::io;
use std::path::Path;

use crate::SessionRecord;

/// Writes, into `dir` (created if missing), for session N (from 1, in the order of `sessions`):
/// `session-N.pcm`, its audio as 16-bit little-endian mono PCM (as received, or decoded from
/// Opus); for an Opus session whose stream was kept, `session-N.opus`, the Ogg Opus stream as
/// received (what `opusdec` reads); and `sessions.json`, an array with one object per session:
/// `id`, `pcm` and `opus` (the file names, `opus` null for PCM sessions), `bytes` and `crc32`
/// of the audio, `appends`, `items` (`item_id`, `start` and `bytes` in the audio,
/// `transcript`), `finished`, `close_code`, and `opus_error` (why an Opus stream was refused,
/// or null).
///
/// The audio is there only if the emulator ran with
/// [`EmulatorConfig::record_audio`](crate::EmulatorConfig::record_audio).
pub fn write_sessions(dir: &Path, sessions: &[SessionRecord]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut summary = Vec::with_capacity(sessions.len());
    for (n, s) in sessions.iter().enumerate() {
        let pcm = format!("session-{}.pcm", n + 1);
        std::fs::write(dir.join(&pcm), &s.audio_data)?;
        // Only sessions that sent Opus have a stream to write (and only a build that decodes
        // Opus keeps it).
        let opus = (!s.opus_data.is_empty()).then(|| format!("session-{}.opus", n + 1));
        if let Some(opus) = &opus {
            std::fs::write(dir.join(opus), &s.opus_data)?;
        }
        let items: Vec<_> = s
            .items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "item_id": i.item_id,
                    "start": i.start,
                    "bytes": i.audio.bytes,
                    "transcript": i.transcript,
                })
            })
            .collect();
        summary.push(serde_json::json!({
            "id": s.id,
            "pcm": pcm,
            "opus": opus,
            "bytes": s.audio.bytes,
            "crc32": s.audio.crc32,
            "appends": s.appends,
            "items": items,
            "finished": s.finished,
            "close_code": s.close_code,
            "opus_error": s.opus_error,
        }));
    }
    let text = serde_json::to_string_pretty(&summary).map_err(io::Error::other)?;
    std::fs::write(dir.join("sessions.json"), text + "\n")
}
