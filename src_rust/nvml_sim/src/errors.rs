//! nvmlErrorString's texts: NVIDIA's own, as data.
//!
//! Taken from NVIDIA's libnvidia-ml.so.1 550.163.01 (Debian trixie non-free,
//! package libnvidia-ml1 550.163.01-2) by calling its nvmlErrorString for
//! codes 0..=40 and 999 (through ctypes, in a private mount namespace with its
//! own /dev). 535.261.03 (bookworm non-free) gives the same texts, except that
//! it has none for 28 and 29 ("Unknown Error"). Codes without a text of their
//! own (30, NVML_ERROR_RESET_TYPE_NOT_SUPPORTED, in 550 too, and any unknown
//! code) answer "Unknown Error", as both libraries do. To check again: fetch the
//! package (`apt-get download libnvidia-ml1` with a private sources list, then
//! `dpkg -x`), and print `nvmlErrorString(code)` for each code.

use std::ffi::CStr;

use nvml_sys::nvmlReturn_t;

/// (code, text), by code.
pub const TEXTS: &[(nvmlReturn_t, &CStr)] = &[
    (0, c"Success"),
    (1, c"Uninitialized"),
    (2, c"Invalid Argument"),
    (3, c"Not Supported"),
    (4, c"Insufficient Permissions"),
    (5, c"Already Initialized"),
    (6, c"Not Found"),
    (7, c"Insufficient Size"),
    (8, c"Insufficient External Power"),
    (9, c"Driver Not Loaded"),
    (10, c"Timeout"),
    (11, c"Interrupt Request Issue"),
    (12, c"NVML Shared Library Not Found"),
    (13, c"Function Not Found"),
    (14, c"Corrupted infoROM"),
    (15, c"GPU is lost"),
    (16, c"GPU requires reset"),
    (17, c"GPU access blocked by the operating system"),
    (18, c"Driver/library version mismatch"),
    (19, c"In use by another client"),
    (20, c"Insufficient Memory"),
    (21, c"No data"),
    (22, c"vGPU ECC not supported"),
    (23, c"Insufficient Resources"),
    (24, c"Invalid Frequency"),
    (25, c"Argument version mismatch"),
    (26, c"Requested functionality has been deprecated"),
    (27, c"System is not in ready state"),
    (28, c"No supported GPUs were found"),
    (
        29,
        c"Resource not in correct state to perform requested operation",
    ),
];

const UNKNOWN: &CStr = c"Unknown Error";

/// The text NVIDIA's library gives for `code`.
pub fn text(code: nvmlReturn_t) -> &'static CStr {
    TEXTS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(UNKNOWN, |(_, t)| t)
}
