//! Builds the eBPF programs (the `dataplane-ebpf` crate) with the nightly
//! toolchain and bpf-linker, so that a plain `cargo build -p fleetnet-agent`
//! embeds a fresh object. `cargo xtask setup` installs what this needs.
//!
//! The nested cargo runs quietly; its output is shown only when it fails.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_TARGET: &str = "bpfel-unknown-none";
const EBPF_PACKAGE: &str = "dataplane-ebpf";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("the agent sits in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    for input in ["dataplane-ebpf", "dataplane-common", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    if env::var_os("CARGO_CFG_FUZZING").is_some() {
        // `cargo fuzz` builds (`--cfg fuzzing`) exercise the decoders, and
        // nothing in them loads the programs: an empty object spares them
        // the programs' build.
        write(&out_dir.join(EBPF_PACKAGE), &[]);
        return;
    }
    // A separate target dir: the outer cargo holds a lock on its own.
    let target_dir = out_dir.join("ebpf-target");
    let output = Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "--quiet", "--release"])
        .args(["--package", EBPF_PACKAGE, "--bin", EBPF_PACKAGE])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace)
        // BTF in the object lets bpftool and the loader show typed maps.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        )
        // The outer build's compiler settings must not leak into the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => fail(&format!("cannot run rustup ({error})")),
    };
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail("cargo +nightly build of dataplane-ebpf failed (its output is above)");
    }
    let object = target_dir
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE);
    copy(&object, &out_dir.join(EBPF_PACKAGE));
}

fn write(to: &Path, contents: &[u8]) {
    if let Err(error) = std::fs::write(to, contents) {
        fail(&format!("cannot write {}: {error}", to.display()));
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(error) = std::fs::copy(from, to) {
        fail(&format!(
            "cannot copy {} to {}: {error}",
            from.display(),
            to.display()
        ));
    }
}

fn fail(what: &str) -> ! {
    panic!(
        "building the eBPF programs failed: {what}. \
         Run `cargo xtask setup` to install the nightly rust-src component and bpf-linker."
    )
}
