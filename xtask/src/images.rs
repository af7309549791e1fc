//! `cargo xtask images`: builds Kestrel's offline OCI image archives.
//!
//! No public registry is reachable from where Kestrel is tested, so the node
//! agent imports these archives into containerd at start (as k3s does for
//! air-gapped installs). Each archive is an OCI image layout in a tar:
//! `oci-layout`, `index.json` and `blobs/sha256/*`, with one gzip layer.
//! Layers are deterministic (mtime 0, root-owned), so rebuilding gives the
//! same digests.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use flate2::{Compression, write::GzEncoder};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::sh;

/// What goes in one image.
struct ImageSpec<'a> {
    /// Archive file name, without `.tar`.
    file: &'a str,
    /// The full reference containerd stores it under.
    reference: &'a str,
    /// Entrypoint and default arguments.
    entrypoint: &'a [&'a str],
    cmd: &'a [&'a str],
}

/// The pause image every pod sandbox runs.
pub const PAUSE: &str = "docker.io/kestrel/pause:0.1.0";
/// busybox from Debian's busybox-static 1.35; `image: busybox:1.35` resolves to it.
pub const BUSYBOX: &str = "docker.io/library/busybox:1.35";
/// The echo server tests and benchmarks use.
pub const ECHO: &str = "docker.io/kestrel/echo:0.1.0";

#[derive(Debug, Default, clap::Args)]
pub struct ImagesArgs {
    /// Where to write the archives.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(root: &Path, args: &ImagesArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/images"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bins = build_static_binaries(root)?;

    // Single-binary images: the static executable at the root, as the entrypoint.
    for (file, reference, binary, path) in [
        ("pause", PAUSE, "kestrel-pause", "pause"),
        ("kestrel-echo", ECHO, "kestrel-echo", "kestrel-echo"),
    ] {
        let entrypoint = format!("/{path}");
        let spec = ImageSpec {
            file,
            reference,
            entrypoint: &[&entrypoint],
            cmd: &[],
        };
        let mut layer = Layer::default();
        layer.file(path, &fs::read(bins.join(binary))?, 0o755)?;
        write_archive(&out, &spec, layer)?;
    }

    let busybox = ImageSpec {
        file: "busybox",
        reference: BUSYBOX,
        entrypoint: &[],
        cmd: &["sh"],
    };
    write_archive(&out, &busybox, busybox_layer()?)?;
    eprintln!(
        "images: wrote {PAUSE}, {BUSYBOX} and {ECHO} to {}",
        out.display()
    );
    Ok(())
}

/// Builds the image binaries as static executables, so the images need no
/// libc of their own.
fn build_static_binaries(root: &Path) -> anyhow::Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    let target_dir = root.join("target/images-build");
    sh(Command::new("cargo")
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--package",
            "kestrel-pause",
            "--package",
            "kestrel-echo",
        ])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        // With --target, RUSTFLAGS reach only target crates, not build scripts.
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    Ok(target_dir.join(target).join("release"))
}

/// The busybox layer: the static binary, a link per applet, and the few
/// files a shell expects.
fn busybox_layer() -> anyhow::Result<Layer> {
    let busybox = Path::new("/bin/busybox");
    let binary = fs::read(busybox).context("reading /bin/busybox (install busybox-static)")?;
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    if !list.status.success() {
        bail!("busybox --list-full failed");
    }
    let mut layer = Layer::default();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "var", "home",
    ] {
        layer.dir(dir, 0o755)?;
    }
    layer.dir("tmp", 0o1777)?;
    layer.file("bin/busybox", &binary, 0o755)?;
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        0o644,
    )?;
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        layer.symlink(applet, "/bin/busybox")?;
    }
    Ok(layer)
}

/// An uncompressed layer tar under construction.
struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }
}

impl Layer {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar
            .append_data(&mut header, path, data)
            .with_context(|| format!("adding {path}"))
    }

    fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut header, format!("{path}/"), &[][..])
            .with_context(|| format!("adding {path}"))
    }

    fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut header, path, target)
            .with_context(|| format!("adding {path}"))
    }

    fn finish(self) -> anyhow::Result<Vec<u8>> {
        self.tar.into_inner().context("finishing the layer tar")
    }
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes `<out>/<file>.tar` as an OCI image layout holding one image.
fn write_archive(out: &Path, spec: &ImageSpec<'_>, layer: Layer) -> anyhow::Result<()> {
    let layer_tar = layer.finish()?;
    let diff_id = digest(&layer_tar);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;

    let tag = spec.reference.rsplit_once(':').map_or("latest", |(_, t)| t);
    let mut config = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    });
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        config["Cmd"] = json!(spec.cmd);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest(&layer_gz),
            "size": layer_gz.len(),
        }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": spec.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let mut archive = Layer::default();
    archive.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    archive.file("index.json", &index, 0o644)?;
    archive.dir("blobs", 0o755)?;
    archive.dir("blobs/sha256", 0o755)?;
    for blob in [&config, &manifest, &layer_gz] {
        let name = digest(blob);
        let hex = name.trim_start_matches("sha256:");
        archive.file(&format!("blobs/sha256/{hex}"), blob, 0o644)?;
    }
    let path = out.join(format!("{}.tar", spec.file));
    let tmp = path.with_extension("tar.tmp");
    fs::write(&tmp, archive.finish()?).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    eprintln!(
        "images: {} -> {} ({} bytes of layer)",
        spec.reference,
        path.display(),
        layer_gz.len()
    );
    Ok(())
}
