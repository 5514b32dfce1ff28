//! The stats hot path of the NVIDIA device plugin: NVML loaded with dlopen,
//! every tracked device read in parallel with a per-tick deadline, and
//! Nomad's StatsResponse encoded by hand. No Python here; the PyO3 glue in
//! src_rust/native wraps [`Engine`].

pub mod encode;
pub mod engine;
pub mod gpm;
pub mod host_memory;
pub mod lanes;
pub mod nvml;
pub mod pool;
pub mod sample;
pub mod ticker;
pub mod vocabulary;
pub mod xid;

pub use engine::{Engine, EngineConfig, Level, LogEvent, LogSink, TrackedDevice, STATS_READ};
pub use lanes::{Held, Hold, Lanes};
pub use nvml::{Nvml, NvmlError, DEFAULT_LIBRARY};
pub use sample::{DeviceSample, Extended, GpmReadings, ReadOptions, Reading};
pub use ticker::{SharedEngine, Source, Ticker};
