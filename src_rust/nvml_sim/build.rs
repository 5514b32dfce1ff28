// Tools look the driver up by SONAME (dlopen("libnvidia-ml.so.1")), so the library
// must carry that name even though cargo calls the file libnvml_sim.so.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
}
