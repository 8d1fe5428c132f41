//! The local emulator of the service (being written).
