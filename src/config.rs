//! Connection parameters and session configuration (being written).

/// The language codes the service accepts for `input_audio_transcription.language`
/// (protocol.md §4.3, 27 codes). Omitting the language means automatic detection.
pub const LANGUAGES: [&str; 27] = [
    "zh", "yue", "en", "ja", "de", "ko", "ru", "fr", "pt", "ar", "it", "es", "hi", "id", "th", "tr",
    "uk", "vi", "cs", "da", "fil", "fi", "is", "ms", "no", "pl", "sv",
];
