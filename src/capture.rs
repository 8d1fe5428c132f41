//! ALSA microphone capture (being written).
