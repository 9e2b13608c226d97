// libnice is linked for one call webrtcbin does not expose on 1.22: adding 127.0.0.1 as a local
// ICE address, which loopback-only networks (tests, single-host setups) need.
fn main() {
    println!("cargo:rustc-link-lib=nice");
}
