//! A simulated NVIDIA driver: the NVML C API over simulated GPUs described by a
//! scenario file (env `NVML_SIM_SCENARIO`). Built as a cdylib whose SONAME is
//! `libnvidia-ml.so.1`, so nvidia-ml-py, go-nvml and our Rust poller load it as they
//! would load the real driver. See docs/simulated-driver.md.

// Before the modules that export entry points with its macros (device_queries!).
#[macro_use]
pub mod api;
pub mod branches;
pub mod errors;
pub mod events;
pub mod fabric;
pub mod fns;
pub mod gen;
pub mod gpm;
pub mod models;
pub mod scenario;
pub mod sim;
pub mod state;
mod stubs;
