//! Downmix and low-pass resampling to the session rate (being written).
