//! The engine on the simulated driver playing NVIDIA's branch 535 (whose library lacks
//! functions newer branches export) reads what it reads at the newest branch: it calls
//! nothing 535 lacks, and a missing optional function would only turn its stats N/A.

mod common;

use std::sync::Arc;

use stats_core::{Engine, EngineConfig, Reading};

/// Eight H100s whose metrics are constant, so the two libraries' reads can be compared.
fn scenario(branch: u32) -> String {
    common::h100s(
        "branches",
        8,
        "[gpus.stats]\nutilization_gpu = 61\nutilization_memory = 37\ntemperature_c = 54\n\
         power_w = 412\nmemory_used_mib = 30000\nbar1_used_mib = 1024\necc_corrected = 3\n",
    ) + &format!("[driver]\nbranch = {branch}\n")
}

#[test]
fn the_engine_reads_the_same_at_branch_535_as_at_the_newest() {
    let newest = *common::branches().last().unwrap();
    assert!(newest > 535);
    let mut seen = Vec::new();
    for branch in [535, newest] {
        let (dir, nvml, ids) =
            common::open_at(&format!("branch-{branch}"), &scenario(branch), Some(branch));
        assert_eq!(ids.len(), 8);
        let mut engine = Engine::new(Arc::clone(&nvml), EngineConfig::default());
        engine.track(common::tracked(&ids, "H100"));
        let samples = engine.read_all();
        for s in &samples {
            assert_eq!(s.power_w, Reading::Ratio(412, 700), "{s:?}");
            assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
            assert_eq!(s.temperature_c, Reading::Int(54), "{s:?}");
        }
        seen.push(samples);
        drop(engine);
        drop(nvml);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(seen[0], seen[1]);
}
