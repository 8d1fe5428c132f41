//! Audio helpers that need no network: a streaming WAV reader and a resampler for
//! microphones that only do 44.1/48 kHz stereo.

pub mod resample;
pub mod wav;
