//! The host's memory, for GPUs without memory of their own (an integrated GPU
//! such as GB10 answers nvmlDeviceGetMemoryInfo with NOT_SUPPORTED): their
//! "Memory state" is the host's, as the fingerprint's memory attribute is.

/// (used, total) in bytes from /proc/meminfo: MemTotal - MemAvailable, MemTotal.
pub fn host_memory() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let total = kib("MemTotal")?;
    let available = kib("MemAvailable")?;
    Some((total.saturating_sub(available), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_used_and_total() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(((24_576_000 - 20_480_000) * 1024, 24_576_000 * 1024))
        );
    }

    #[test]
    fn missing_keys_are_none() {
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn this_host_has_memory() {
        let (used, total) = host_memory().expect("/proc/meminfo");
        assert!(total > 0 && used <= total);
    }
}
