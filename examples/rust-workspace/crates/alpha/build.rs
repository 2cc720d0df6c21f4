// Writes a constant into OUT_DIR, which src/lib.rs includes.
use std::env;
use std::fs;
use std::path::Path;

fn main() {
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let code = "pub const GENERATED: &str = \"written by build.rs\";\n";
    fs::write(Path::new(&out).join("generated.rs"), code).expect("write generated.rs");
    println!("cargo:rerun-if-changed=build.rs");
}
