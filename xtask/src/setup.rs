//! `cargo xtask setup`: make a fresh Linux machine able to build and test
//! fleetnet. Each step checks first and does nothing when already done.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run;

/// Debian packages the build, tests, demo and benchmarks use.
const PACKAGES: &[&str] = &[
    "iproute2",          // ip: namespaces, veth, bridge, VXLAN in the fleet in a box
    "util-linux",        // setpriv: runs the agent without privileges in a test
    "iputils-ping",      // ping: the demo's hints for looking around a kept fleet
    "protobuf-compiler", // protoc: the etcd-client crate's build script
    "libprotobuf-dev",   // the well-known .proto files protoc imports
    "etcd-server",       // etcd 3.4: the shared mesh keyspace in tests and the demo
    "etcd-client",       // etcdctl: inspecting the keyspace
    "prometheus",        // a real Prometheus scraping the agents in a test
    "openssl",           // certificates for the etcd TLS test
    "python3-pip",       // pip: installs kubernetes-validate for the manifests tests
    "iperf3",            // throughput between pods in the benchmarks
    "iptables",          // the kube-proxy baseline of the benchmarks
    "g++",               // libfuzzer-sys builds libFuzzer (C++) for the fuzz targets
    "musl-tools",        // musl-gcc: C parts of the static binary of the images (ring)
    "buildah",           // builds the images from the Containerfile, no daemon needed
    "skopeo",            // inspects and copies the images' OCI archives
    "umoci",             // unpacks an image into a root filesystem to run it
    "curl",              // a mutual-TLS client other than the relay in the relay test
    "chromium",          // a real browser for the web UI test (headless)
];

/// Validates the rendered manifests against Kubernetes' own API schemas,
/// which it bundles, so the manifests tests run offline.
const KUBERNETES_VALIDATE: &str = "1.37.0";

/// Builds and runs the fuzz targets in fuzz/ (`cargo xtask fuzz`).
const CARGO_FUZZ: &str = "0.13.2";

/// TCX attachment (used for every program) arrived in Linux 6.6.
const MIN_KERNEL: (u32, u32) = (6, 6);

pub(crate) fn ensure() -> Result<()> {
    check_kernel()?;
    mount_bpffs()?;
    install_packages()?;
    check_kubectl()?;
    install_kubernetes_validate()?;
    let sysroot = nightly_sysroot()?;
    install_rust_src(&sysroot)?;
    install_bpf_linker(&sysroot)?;
    install_cargo_fuzz()?;
    install_musl_target()?;
    Ok(())
}

fn check_kernel() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel version")?;
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < MIN_KERNEL {
        bail!(
            "fleetnet needs Linux {}.{} or newer (TCX program attachment); this kernel is {}",
            MIN_KERNEL.0,
            MIN_KERNEL.1,
            release.trim()
        );
    }
    Ok(())
}

/// Agents pin their maps under /sys/fs/bpf. An agent mounts bpffs itself
/// when it is missing, but the tests start many agents at once, which must
/// not race to mount it; so mount it here, once (as Cilium's init container
/// does for its DaemonSet).
fn mount_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let output = Command::new("stat")
        .args(["-f", "-c", "%t", BPF_ROOT])
        .output()?;
    let magic =
        i64::from_str_radix(String::from_utf8_lossy(&output.stdout).trim(), 16).unwrap_or(0);
    if output.status.success() && magic == BPF_FS_MAGIC {
        return Ok(());
    }
    if !is_root() {
        bail!("{BPF_ROOT} is not a BPF filesystem and mounting one needs root; rerun as root");
    }
    eprintln!("setup: mounting bpffs at {BPF_ROOT}");
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPF_ROOT]))
}

const BPF_ROOT: &str = "/sys/fs/bpf";

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root; rerun as root",
            missing.join(", ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The manifests tests render every kustomization in manifests/ with
/// `kubectl kustomize`. kubectl comes from Kubernetes' own repositories or
/// a cloud SDK, not Debian, so it is not installed here.
fn check_kubectl() -> Result<()> {
    let works = Command::new("kubectl")
        .args(["kustomize", "--help"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !works {
        bail!(
            "kubectl (1.21 or newer, for `kubectl kustomize`) is missing; install it \
             (https://kubernetes.io/docs/tasks/tools/), the manifests tests render manifests/ with it"
        );
    }
    Ok(())
}

fn install_kubernetes_validate() -> Result<()> {
    let version = || {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--version"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    if version().as_deref() == Some(KUBERNETES_VALIDATE) {
        return Ok(());
    }
    eprintln!("setup: installing kubernetes-validate {KUBERNETES_VALIDATE} with pip");
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}"))
        // Debian's own python3 refuses installs outside a virtualenv
        // otherwise (PEP 668); older pips ignore the variable.
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore"))?;
    match version() {
        Some(found) if found == KUBERNETES_VALIDATE => Ok(()),
        found => bail!(
            "pip installed kubernetes-validate {KUBERNETES_VALIDATE}, but `python3 -m kubernetes_validate` \
             reports {}; is python3 the interpreter pip installed into?",
            found.unwrap_or_else(|| "nothing".into())
        ),
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout).contains("install ok installed")
        })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The pre-installed nightly toolchain builds the eBPF crate.
fn nightly_sysroot() -> Result<PathBuf> {
    let output = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    if !output.status.success() {
        bail!(
            "the nightly Rust toolchain is missing; install it with `rustup toolchain install nightly` \
             (fleetnet's eBPF programs build with it)"
        );
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// The images' binaries are static, built for musl with the stable
/// toolchain.
fn install_musl_target() -> Result<()> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|target| target == crate::image::TARGET)
    {
        return Ok(());
    }
    eprintln!("setup: adding the {} target", crate::image::TARGET);
    run(Command::new("rustup").args(["target", "add", crate::image::TARGET]))
}

fn install_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("setup: adding the rust-src component to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must link against an LLVM of the nightly rustc's major
/// version. It is built against the libLLVM the nightly itself ships, so
/// it loads exactly when that library (named after the LLVM version) is on
/// the library path: running it is the compatibility check.
fn install_bpf_linker(sysroot: &Path) -> Result<()> {
    let libdir = sysroot.join("lib");
    let works = Command::new("bpf-linker")
        .arg("--version")
        .env("LD_LIBRARY_PATH", &libdir)
        .output()
        .is_ok_and(|output| output.status.success());
    if works {
        return Ok(());
    }
    let llvm = std::fs::read_dir(&libdir)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        })
        .with_context(|| {
            format!(
                "no libLLVM in {}; is the nightly toolchain complete?",
                libdir.display()
            )
        })?;
    let major = llvm
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("libLLVM.so."))
        .and_then(|rest| rest.split('.').next())
        .context("cannot read the LLVM version from the nightly's libLLVM name")?
        .to_string();
    let prefix = cache_dir().join(format!("llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    eprintln!("setup: building bpf-linker against the nightly's LLVM {major} (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))
}

/// cargo-fuzz drives the nightly toolchain (fuzzing needs its `-Z`
/// flags), so it is built with it too; any version that runs is kept.
fn install_cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if works {
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ} (about a minute)");
    run(Command::new("cargo").args([
        "+nightly",
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ,
        "--locked",
    ]))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("fleetnet")
}
