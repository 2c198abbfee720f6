//! `cargo xtask image`: fleetnet's two images, the agent's and the fleet
//! controller's, built from the Containerfile with buildah (no container
//! engine daemon), each a static musl binary on an empty base, written as
//! OCI archives under target/images/. [`check`] proves what was built: a
//! valid OCI image of exactly the files expected, whose entrypoint runs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, run};

/// The images' binaries are static: musl, no libc to bring.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-musl";
/// Cargo profile of the images' binaries (release, stripped).
const PROFILE: &str = "image";
/// Where the images and what they are made of go.
const OUT: &str = "target/images";
/// Where the binary sits in the image, on the PATH of every runtime.
const BINARY_IN_IMAGE: &str = "usr/bin/fleetnet";

/// One image: where the manifests name it, and how its binary is built.
struct Spec {
    /// The kustomization whose `images:` names it (and its tag).
    kustomization: &'static str,
    title: &'static str,
    /// Cargo flags choosing its features.
    features: &'static [&'static str],
}

const SPECS: [Spec; 2] = [
    Spec {
        kustomization: "manifests/base/kustomization.yaml",
        title: "fleetnet",
        features: &[],
    },
    Spec {
        kustomization: "manifests/controller/kustomization.yaml",
        title: "fleetnet-controller",
        // No agent: no aya, no eBPF object.
        features: &["--no-default-features"],
    },
];

/// A built image.
pub(crate) struct Built {
    pub(crate) title: &'static str,
    /// `name:tag`, as the manifests run it.
    pub(crate) reference: String,
    pub(crate) archive: PathBuf,
    pub(crate) version: String,
    /// Build time of its binary and image, in seconds.
    pub(crate) seconds: f64,
}

/// Builds both images; loads them into a local podman or docker when one
/// runs.
pub(crate) fn build() -> Result<Vec<Built>> {
    let (version, source) = workspace_version_and_source()?;
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The commit's time: rebuilding the same commit makes the same image.
    let timestamp = git(&["log", "-1", "--format=%ct"]).unwrap_or_else(|| "0".into());
    std::fs::create_dir_all(OUT)?;
    let mut built = Vec::new();
    for spec in &SPECS {
        let started = Instant::now();
        let name = image_name(spec, &version)?;
        let context = Path::new(OUT).join(spec.title);
        std::fs::create_dir_all(&context)?;
        let mut build = vec!["build", "--profile", PROFILE, "--target", TARGET];
        build.extend(["--package", "fleetnet-cli", "--bin", "fleetnet"]);
        build.extend(spec.features);
        cargo(&build)?;
        let binary = Path::new("target")
            .join(TARGET)
            .join(PROFILE)
            .join("fleetnet");
        std::fs::copy(&binary, context.join("fleetnet"))
            .with_context(|| format!("copying {}", binary.display()))?;
        let reference = format!("{name}:{version}");
        let archive = Path::new(OUT).join(format!("{}-{version}.oci.tar", spec.title));
        let _ = std::fs::remove_file(&archive);
        let mut build_image = buildah();
        build_image
            .args(["build", "--isolation", "chroot", "--timestamp", &timestamp])
            .args(["-f", "Containerfile", "-t", &reference])
            .args(["--build-arg", &format!("TITLE={}", spec.title)])
            .args(["--build-arg", &format!("VERSION={version}")])
            .args(["--build-arg", &format!("REVISION={revision}")])
            .args(["--build-arg", &format!("SOURCE={source}")]);
        for (key, value) in [
            ("version", &version),
            ("revision", &revision),
            ("source", &source),
        ] {
            build_image.args([
                "--annotation",
                &format!("org.opencontainers.image.{key}={value}"),
            ]);
        }
        run(build_image.arg(&context))?;
        run(buildah().args([
            "push",
            &reference,
            &format!("oci-archive:{}:{reference}", archive.display()),
        ]))?;
        run(buildah().args(["rmi", &reference]))?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "image: {reference} in {} ({:.1} MB), {seconds:.0} s",
            archive.display(),
            size(&archive)? as f64 / 1e6
        );
        built.push(Built {
            title: spec.title,
            reference,
            archive,
            version: version.clone(),
            seconds,
        });
    }
    for image in &built {
        load(image);
    }
    Ok(built)
}

/// The workspace's version, as Cargo.toml has it, and the repository the
/// images come from (`org.opencontainers.image.source`).
fn workspace_version_and_source() -> Result<(String, String)> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed");
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let cli = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "fleetnet-cli"))
        .context("cargo metadata has no fleetnet-cli")?;
    let field = |name: &str| {
        cli[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("Cargo.toml has no {name} for fleetnet-cli"))
    };
    Ok((field("version")?, field("repository")?))
}

/// The image's name, from the `images:` of its kustomization, whose tag
/// must be this version.
fn image_name(spec: &Spec, version: &str) -> Result<String> {
    let text = std::fs::read_to_string(spec.kustomization)
        .with_context(|| format!("reading {}", spec.kustomization))?;
    // The `images:` block: indented lines after it, `- name:` then `newTag:`.
    let mut lines = text
        .lines()
        .skip_while(|line| *line != "images:")
        .skip(1)
        .take_while(|line| line.starts_with(' ') || line.is_empty())
        .map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("- name: ") else {
            continue;
        };
        let tag = lines.next().and_then(|line| line.strip_prefix("newTag: "));
        if tag != Some(version) {
            bail!(
                "{} tags {name} {tag:?}, but Cargo.toml's version is {version}; one version \
                 everywhere: set newTag to {version}",
                spec.kustomization
            );
        }
        return Ok(name.to_string());
    }
    bail!("{} has no `images:` entry", spec.kustomization)
}

/// buildah with its state under target/images (no system-wide storage).
fn buildah() -> Command {
    let mut command = Command::new("buildah");
    command
        .args(["--storage-driver", "vfs"])
        .arg("--root")
        .arg(Path::new(OUT).join("storage"))
        .arg("--runroot")
        .arg(Path::new(OUT).join("run"));
    command
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

/// Into a local engine, where one runs; otherwise says where the archive is.
fn load(image: &Built) {
    let archive = image.archive.display().to_string();
    for (engine, probe) in [("podman", "version"), ("docker", "info")] {
        let runs = Command::new(engine)
            .arg(probe)
            .output()
            .is_ok_and(|output| output.status.success());
        if runs {
            let loaded = Command::new(engine)
                .args(["load", "--input", &archive])
                .output()
                .is_ok_and(|output| output.status.success());
            eprintln!(
                "image: {} {} into {engine}",
                image.reference,
                if loaded {
                    "loaded"
                } else {
                    "could not be loaded"
                }
            );
            return;
        }
    }
    eprintln!(
        "image: no podman or running docker here; push {archive} with \
         `skopeo copy oci-archive:{archive} docker://REGISTRY/...`"
    );
}

/// Checks the built images: valid OCI, exactly the files expected, the
/// entrypoint answering `--version` with this version, annotations, and
/// the controller's binary free of the agent's eBPF object. Returns the
/// unpacked agent binary, for the tests to run.
pub(crate) fn check(built: &[Built]) -> Result<PathBuf> {
    let mut agent_binary = None;
    for image in built {
        let archive = format!("oci-archive:{}", image.archive.display());
        let manifest: Value =
            serde_json::from_slice(&output("skopeo", &["inspect", "--raw", &archive])?)?;
        if manifest["mediaType"] != "application/vnd.oci.image.manifest.v1+json" {
            bail!("{}: not an OCI image manifest: {manifest}", image.reference);
        }
        let annotations = &manifest["annotations"];
        if annotations["org.opencontainers.image.version"] != image.version.as_str() {
            bail!(
                "{}: its version annotation is not {}: {manifest}",
                image.reference,
                image.version
            );
        }
        for key in ["revision", "source"] {
            if !annotations[format!("org.opencontainers.image.{key}")].is_string() {
                bail!("{}: no {key} annotation: {manifest}", image.reference);
            }
        }
        let rootfs = unpack(image)?;
        let files = files_under(&rootfs)?;
        let expected = ["usr", "usr/bin", BINARY_IN_IMAGE];
        if files != expected {
            bail!(
                "{} holds {files:?}, not exactly {expected:?}",
                image.reference
            );
        }
        let entrypoint = entrypoint(&rootfs)?;
        let answer = output_in(&rootfs, &entrypoint, &["--version"])?;
        let want = format!("fleetnet {}", image.version);
        if String::from_utf8_lossy(&answer).trim() != want {
            bail!(
                "{}: `{} --version` said {:?}, not {want:?}",
                image.reference,
                entrypoint.join(" "),
                String::from_utf8_lossy(&answer)
            );
        }
        let binary = rootfs.join(BINARY_IN_IMAGE);
        eprintln!(
            "image: {} is valid OCI, holds /{BINARY_IN_IMAGE} only ({:.1} MB), answers `{want}`",
            image.reference,
            size(&binary)? as f64 / 1e6
        );
        if image.title == "fleetnet" {
            agent_binary = Some(binary);
        } else {
            controller_has_no_datapath(&rootfs, &entrypoint, &binary)?;
        }
    }
    agent_binary.context("no agent image was built")
}

/// Unpacks an image's archive into a runtime bundle; returns its rootfs.
fn unpack(image: &Built) -> Result<PathBuf> {
    let layout = Path::new(OUT).join("layout");
    let bundle = Path::new(OUT).join(format!("{}-bundle", image.title));
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&bundle);
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{}", image.archive.display()),
        &format!("oci:{}:{}", layout.display(), image.title),
    ]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), image.title))
        .arg(&bundle))?;
    Ok(bundle.join("rootfs"))
}

/// Every file and directory under `root`, relative, sorted.
fn files_under(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            found.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The image's entrypoint, from the bundle's runtime config.
fn entrypoint(rootfs: &Path) -> Result<Vec<String>> {
    let config = rootfs
        .parent()
        .context("rootfs has a bundle")?
        .join("config.json");
    let config: Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    let args: Vec<String> = config["process"]["args"]
        .as_array()
        .context("the image has no entrypoint")?
        .iter()
        .filter_map(|arg| arg.as_str().map(str::to_string))
        .collect();
    if args.is_empty() {
        bail!("the image has no entrypoint");
    }
    Ok(args)
}

/// Runs `entrypoint args` inside `rootfs` (a chroot: the binary is
/// static and needs nothing else); its stdout.
fn output_in(rootfs: &Path, entrypoint: &[String], args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(entrypoint)
        .args(args)
        .output()
        .context("running chroot")?;
    if !out.status.success() {
        bail!(
            "{} {} in the image failed: {}",
            entrypoint.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The controller's binary has no `agent` command and none of the bytes of
/// the agent's eBPF object (which the agent's binary does hold).
fn controller_has_no_datapath(rootfs: &Path, entrypoint: &[String], binary: &Path) -> Result<()> {
    if output_in(rootfs, entrypoint, &["agent", "--help"]).is_ok() {
        bail!("the controller's image runs `fleetnet agent`; it must carry no datapath");
    }
    let object = ebpf_object()?;
    // A stretch of program instructions, past the generic ELF header.
    let probe = &object[object.len() / 4..object.len() / 4 + 256];
    let agent = std::fs::read(
        Path::new(OUT)
            .join("fleetnet-bundle/rootfs")
            .join(BINARY_IN_IMAGE),
    )?;
    let controller = std::fs::read(binary)?;
    let holds = |bytes: &[u8]| bytes.windows(probe.len()).any(|window| window == probe);
    if !holds(&agent) {
        bail!("the agent's binary does not hold its eBPF object: the probe is wrong");
    }
    if holds(&controller) {
        bail!("the controller's binary holds the agent's eBPF object");
    }
    eprintln!("image: the controller's binary has no `agent` command and no eBPF object");
    Ok(())
}

/// The eBPF object the agent's image binary embeds (its build's OUT_DIR).
fn ebpf_object() -> Result<Vec<u8>> {
    let build = Path::new("target").join(TARGET).join(PROFILE).join("build");
    let newest = std::fs::read_dir(&build)?
        .flatten()
        .map(|entry| entry.path().join("out/dataplane-ebpf"))
        .filter(|object| object.exists())
        .max_by_key(|object| {
            std::fs::metadata(object)
                .and_then(|meta| meta.modified())
                .ok()
        })
        .context("no eBPF object under the image build")?;
    Ok(std::fs::read(newest)?)
}

fn output(program: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
