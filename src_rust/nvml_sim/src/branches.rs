//! Driver branches a scenario can play (`[driver] branch = 535`). A function can only
//! be missing at link time, so `make sim` links one library per branch whose exports
//! are that branch's list (src_rust/nvml_sim/branches/<branch>.txt, generated from
//! NVIDIA's libraries) and `build/sim/<branch>/libnvidia-ml.so.1`. Here the simulator
//! only checks that the library it runs as is the one for the scenario's branch.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// One NVIDIA driver branch: its driver version and its exported `nvml*` functions.
pub struct Branch {
    pub branch: u32,
    /// The driver version the list was made from (the default of `driver.version`).
    pub version: &'static str,
    pub functions: &'static [&'static str],
}

include!(concat!(env!("OUT_DIR"), "/branches.rs"));

/// The branch `b`, if this library can play it (it is the one linked for `b`);
/// the error names the key and says which library to load instead.
pub fn played(b: u32) -> Result<&'static Branch, String> {
    let Some(branch) = BRANCHES.iter().find(|x| x.branch == b) else {
        let known: Vec<String> = BRANCHES.iter().map(|x| x.branch.to_string()).collect();
        return Err(format!(
            "driver.branch: no function list for branch {b} (src_rust/nvml_sim/branches has {})",
            known.join(", ")
        ));
    };
    if let Some((library, extra)) = exported_outside(branch) {
        return Err(format!(
            "driver.branch: this library ({library}) exports {extra}, which driver branch {b} \
             does not: load build/sim/{b}/libnvidia-ml.so.1 (built by `make sim`)"
        ));
    }
    Ok(branch)
}

#[repr(C)]
struct DlInfo {
    fname: *const c_char,
    fbase: *mut c_void,
    sname: *const c_char,
    saddr: *mut c_void,
}

#[link(name = "dl")]
extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    fn dlopen(file: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
    fn dlclose(handle: *mut c_void) -> c_int;
}

const RTLD_LAZY: c_int = 0x1;
const RTLD_NOLOAD: c_int = 0x4;

/// The first function of another branch's list that the object holding this code
/// exports (with that object's path). None in the branch's own library, and where
/// the code is linked into a program that exports nothing (the crate's own tests).
fn exported_outside(branch: &Branch) -> Option<(String, &'static str)> {
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the address; the answer's strings belong to the loader.
    let object = unsafe {
        if dladdr(played as *const c_void, &mut info) == 0 || info.fname.is_null() {
            return None;
        }
        CStr::from_ptr(info.fname).to_owned()
    };
    // SAFETY: RTLD_NOLOAD only takes a reference to an object already loaded.
    let handle = unsafe { dlopen(object.as_ptr(), RTLD_LAZY | RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    let found = BRANCHES
        .iter()
        .flat_map(|x| x.functions.iter())
        .filter(|f| !branch.functions.contains(f))
        .find(|f| {
            let name = CString::new(**f).expect("no NUL in a symbol name");
            // SAFETY: a lookup in a handle we hold.
            !unsafe { dlsym(handle, name.as_ptr()) }.is_null()
        })
        .copied();
    // SAFETY: the reference taken above.
    unsafe { dlclose(handle) };
    found.map(|f| (object.to_string_lossy().into_owned(), f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_is_sorted_and_its_version_of_its_branch() {
        assert!(!BRANCHES.is_empty());
        for b in BRANCHES {
            assert!(
                b.version.starts_with(&format!("{}.", b.branch)),
                "{}",
                b.version
            );
            assert!(
                b.functions.windows(2).all(|w| w[0] < w[1]),
                "branch {}",
                b.branch
            );
            assert!(b.functions.iter().all(|f| f.starts_with("nvml")));
            assert!(b.functions.contains(&"nvmlInit_v2"));
        }
    }

    #[test]
    fn an_unknown_branch_is_refused_naming_the_key_and_the_known_ones() {
        let err = played(1).err().expect("branch 1 has no list");
        assert!(
            err.starts_with("driver.branch: no function list for branch 1"),
            "{err}"
        );
        assert!(err.contains("535"), "{err}");
    }
}

#[cfg(test)]
mod scenario_tests {
    use crate::sim::Sim;

    #[test]
    fn a_branch_scenario_reports_the_branchs_driver_version_unless_it_sets_one() {
        let sim = Sim::from_toml("t.toml", "name = \"t\"\n[driver]\nbranch = 535\n").unwrap();
        assert_eq!(sim.driver_version, "535.261.03");
        assert_eq!(sim.nvml_version, "12.535.261.03");
        let text = "name = \"t\"\n[driver]\nbranch = 535\nversion = \"535.54.03\"\n";
        assert_eq!(
            Sim::from_toml("t.toml", text).unwrap().driver_version,
            "535.54.03"
        );
        let plain = Sim::from_toml("t.toml", "name = \"t\"\n").unwrap();
        assert_eq!(plain.driver_version, "550.90.07");
    }
}
