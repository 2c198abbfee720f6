//! Tells cargo to rebuild the programs when bpf-linker changes, since it is
//! part of the toolchain that produces the object.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
