use std::fmt::Write as _;
use std::path::Path;

// Tools look the driver up by SONAME (dlopen("libnvidia-ml.so.1")), so the library
// must carry that name even though cargo calls the file libnvml_sim.so.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    branch_table();
}

/// branches/<branch>.txt (NVIDIA's exports per driver branch, see that folder's files)
/// as a table the simulator compiles in: `driver.branch` is checked against it, and the
/// branch's driver version is the default of `driver.version`.
fn branch_table() {
    // Read when the script runs, not baked in when it is compiled.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it");
    let dir = Path::new(&manifest).join("branches");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("src_rust/nvml_sim/branches")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut out = String::from("pub static BRANCHES: &[Branch] = &[\n");
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let branch: u32 = f
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{}: the file name must be the branch number", f.display()));
        let text = std::fs::read_to_string(&f).unwrap();
        let mut lines = text.lines();
        // "# libnvidia-ml.so.1 <version> from ..."
        let header = lines.next().unwrap_or_default();
        let version = header.split_whitespace().nth(2).unwrap_or_else(|| {
            panic!(
                "{}: the first line must be `# <soname> <version> from ...`",
                f.display()
            )
        });
        assert!(
            version.starts_with(&format!("{branch}.")),
            "{}: version {version} is not of branch {branch}",
            f.display()
        );
        write!(
            out,
            "    Branch {{ branch: {branch}, version: {version:?}, functions: &["
        )
        .unwrap();
        for name in lines.filter(|l| !l.is_empty()) {
            write!(out, "{name:?}, ").unwrap();
        }
        out.push_str("] },\n");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("branches.rs");
    std::fs::write(dest, out).unwrap();
}
