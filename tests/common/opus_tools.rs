//! The Xiph reference tools (opus-tools: `opusenc`, `opusinfo`, `opusdec`) as independent
//! checks of an Ogg Opus stream, and a scratch directory for their files. Std only, so that
//! the library's own unit tests can include this file too.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory of this test's own, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh, empty directory named for this process and `name`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qwen-opus-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// The directory.
    // Only the integration tests need it, not the library's unit tests that include this too.
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `file` inside the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs an opus-tools program, which must succeed; returns what it printed (stdout, then
/// stderr). CI installs opus-tools, so a missing program fails the test rather than skipping it.
pub fn run_tool(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install Debian's opus-tools to run the Opus tests")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} failed:\n{text}");
    text
}

/// Checks a file with opusinfo, which warns about sequence gaps, holes, CRC errors and
/// granule positions that disagree with the packets' sample counts.
pub fn opusinfo_is_clean(file: &Path) {
    let text = run_tool("opusinfo", &[file.as_os_str()]);
    assert!(
        !text.contains("WARNING") && !text.contains("ERROR"),
        "opusinfo complains:\n{text}"
    );
    assert!(
        text.contains("Playback length"),
        "opusinfo found no stream:\n{text}"
    );
}

/// Decodes the Ogg Opus file `ogg` with opusdec to a mono WAV at `rate` Hz, written to
/// `wav`.
pub fn opusdec_to_wav(ogg: &Path, rate: u32, wav: &Path) {
    let rate_arg = rate.to_string();
    run_tool(
        "opusdec",
        &[
            "--quiet".as_ref(),
            "--rate".as_ref(),
            rate_arg.as_ref(),
            ogg.as_os_str(),
            wav.as_os_str(),
        ],
    );
}
