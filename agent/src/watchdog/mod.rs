//! watchdog (being written).
