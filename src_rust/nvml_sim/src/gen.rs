//! Deterministic value generators: a metric's value is a pure function of the seed, the
//! device and how many times that metric was sampled, so runs repeat exactly.

use serde::Deserialize;

/// 64-bit mix (splitmix64 finalizer): cheap and well spread, for seeds and UUIDs.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a over bytes, then mixed: a stable hash of names (scenario, UUID input).
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// A metric in the scenario: a number, or a table naming a generator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ValueSpec {
    Constant(f64),
    Generator(GenSpec),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenSpec {
    /// "constant", "random", "sine", "ramp" (wraps) or "counter" (grows forever).
    pub kind: String,
    #[serde(default)]
    pub value: f64,
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub max: f64,
    /// Samples per cycle for "sine" and "ramp".
    #[serde(default = "default_period")]
    pub period: u64,
    /// Increase per sample for "counter".
    #[serde(default = "default_step")]
    pub step: f64,
    /// Mixed with the scenario seed and the device index.
    #[serde(default)]
    pub seed: u64,
}

fn default_period() -> u64 {
    60
}
fn default_step() -> f64 {
    1.0
}

/// A validated generator, ready to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gen {
    Constant(f64),
    Random {
        min: f64,
        max: f64,
        seed: u64,
    },
    Sine {
        min: f64,
        max: f64,
        period: u64,
        seed: u64,
    },
    Ramp {
        min: f64,
        max: f64,
        period: u64,
        seed: u64,
    },
    Counter {
        start: f64,
        step: f64,
    },
}

impl Gen {
    pub fn from_spec(spec: &ValueSpec) -> Result<Gen, String> {
        let g = match spec {
            ValueSpec::Constant(v) => Gen::Constant(*v),
            ValueSpec::Generator(g) => {
                let range_ok = g.max >= g.min;
                match g.kind.as_str() {
                    "constant" => Gen::Constant(g.value),
                    "random" if range_ok => Gen::Random {
                        min: g.min,
                        max: g.max,
                        seed: g.seed,
                    },
                    "sine" if range_ok && g.period > 0 => Gen::Sine {
                        min: g.min,
                        max: g.max,
                        period: g.period,
                        seed: g.seed,
                    },
                    "ramp" if range_ok && g.period > 0 => Gen::Ramp {
                        min: g.min,
                        max: g.max,
                        period: g.period,
                        seed: g.seed,
                    },
                    "counter" => Gen::Counter {
                        start: g.value,
                        step: g.step,
                    },
                    "random" | "sine" | "ramp" => {
                        return Err(format!(
                            "generator {:?} needs max >= min and period > 0",
                            g.kind
                        ))
                    }
                    other => {
                        return Err(format!(
                        "unknown generator kind {other:?} (constant, random, sine, ramp, counter)"
                    ))
                    }
                }
            }
        };
        Ok(g)
    }

    /// The value at sample `n` for the device whose seed is `device_seed`.
    pub fn at(&self, device_seed: u64, n: u64) -> f64 {
        match *self {
            Gen::Constant(v) => v,
            Gen::Random { min, max, seed } => {
                let r = mix64(device_seed ^ mix64(seed) ^ n.wrapping_mul(0xD134_2543_DE82_EF95));
                // 53 random bits -> [0, 1)
                let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
                min + (max - min) * unit
            }
            Gen::Sine {
                min,
                max,
                period,
                seed,
            } => {
                let s = (cycle(device_seed ^ seed, period, n) * std::f64::consts::TAU).sin();
                min + (max - min) * (s + 1.0) / 2.0
            }
            Gen::Ramp {
                min,
                max,
                period,
                seed,
            } => min + (max - min) * cycle(device_seed ^ seed, period, n),
            Gen::Counter { start, step } => start + step * n as f64,
        }
    }
}

/// How far sample `n` is into its period, in [0, 1): each device starts at its
/// own phase (from `seed`), so devices of one group do not move in step.
fn cycle(seed: u64, period: u64, n: u64) -> f64 {
    let phase = mix64(seed) % period;
    ((n + phase) % period) as f64 / period as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_bounded() {
        let r = Gen::Random {
            min: 10.0,
            max: 20.0,
            seed: 7,
        };
        for n in 0..1000 {
            let v = r.at(42, n);
            assert!((10.0..20.0).contains(&v));
            assert_eq!(v, r.at(42, n));
        }
        assert_ne!(r.at(42, 1), r.at(43, 1));
        let s = Gen::Sine {
            min: 0.0,
            max: 100.0,
            period: 10,
            seed: 0,
        };
        assert!((0..100).all(|n| (0.0..=100.0).contains(&s.at(1, n))));
        let c = Gen::Counter {
            start: 5.0,
            step: 2.0,
        };
        assert_eq!(c.at(0, 3), 11.0);
    }

    #[test]
    fn bad_specs_are_named() {
        let spec = ValueSpec::Generator(GenSpec {
            kind: "wobble".into(),
            value: 0.0,
            min: 0.0,
            max: 1.0,
            period: 1,
            step: 1.0,
            seed: 0,
        });
        assert!(Gen::from_spec(&spec).unwrap_err().contains("wobble"));
    }
}
