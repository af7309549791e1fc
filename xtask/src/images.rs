//! `cargo xtask images`: builds Kestrel's offline OCI image archives.
//!
//! No public registry is reachable from where Kestrel is tested, so the node
//! agent imports these archives into containerd at start (as k3s does for
//! air-gapped installs). Each archive is an OCI image layout in a tar:
//! `oci-layout`, `index.json` and `blobs/sha256/*`, with one gzip layer.
//! Layers are deterministic (mtime 0, root-owned), so rebuilding gives the
//! same digests.

use std::{
    collections::BTreeSet,
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
    /// The full references containerd stores it under, all naming the same
    /// manifest; the first is the image's name.
    references: &'a [&'a str],
    /// Entrypoint and default arguments.
    entrypoint: &'a [&'a str],
    cmd: &'a [&'a str],
}

/// The pause image every pod sandbox runs.
pub const PAUSE: &str = "docker.io/kestrel/pause:0.1.0";
/// busybox from Debian's busybox 1.35; `image: busybox:1.35` resolves to it.
pub const BUSYBOX: &str = "docker.io/library/busybox:1.35";
/// The same busybox image, so `image: busybox` (`kubectl run --image=busybox`)
/// resolves offline too.
pub const BUSYBOX_LATEST: &str = "docker.io/library/busybox:latest";
/// The echo server tests and benchmarks use.
pub const ECHO: &str = "docker.io/kestrel/echo:0.1.0";
/// busybox plus the real kubectl 1.35 (`cargo xtask setup` puts it in
/// `.cache/bin/`): an in-cluster client for tests, using the pod's
/// ServiceAccount token.
pub const KUBECTL: &str = "docker.io/kestrel/kubectl:0.1.0";

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
            references: &[reference],
            entrypoint: &[&entrypoint],
            cmd: &[],
        };
        let mut layer = Layer::default();
        layer.file(path, &fs::read(bins.join(binary))?, 0o755)?;
        write_archive(&out, &spec, layer)?;
    }

    let busybox = ImageSpec {
        file: "busybox",
        references: &[BUSYBOX, BUSYBOX_LATEST],
        entrypoint: &[],
        cmd: &["sh"],
    };
    write_archive(&out, &busybox, busybox_layer()?)?;

    let kubectl = ImageSpec {
        file: "kubectl",
        references: &[KUBECTL],
        entrypoint: &[],
        cmd: &["sh"],
    };
    write_archive(&out, &kubectl, kubectl_layer(root)?)?;
    eprintln!(
        "images: wrote {PAUSE}, {BUSYBOX} (also {BUSYBOX_LATEST}), {ECHO} and {KUBECTL} to {}",
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

/// The busybox layer: Debian's dynamic busybox with the shared libraries it
/// links (copied from the build host, found with `ldd`), a link per applet,
/// and the few files a shell and the resolver expect.
///
/// This is how the official `busybox:glibc` image is made, and it is chosen
/// over busybox-static for two reasons. busybox-static's shell runs its own
/// applets in preference to `$PATH` (`FEATURE_SH_STANDALONE`), so every `sh`
/// would bypass the [`NSLOOKUP`] wrapper; the dynamic build's shell searches
/// `$PATH` like any other. And a static glibc loads
/// any NSS module but its built-in ones with a static dlopen that needs
/// exactly the glibc it was linked with, while dynamic NSS is glibc's
/// supported setup. No `libnss_*.so.2` is copied: since glibc 2.34
/// (bookworm has 2.36) `files` and `dns` live in libc.so.6 itself and those
/// files are empty stubs, and nsswitch.conf names only those two sources, so
/// nothing is ever dlopened and everything used at run time is in the image.
fn busybox_layer() -> anyhow::Result<Layer> {
    let busybox = Path::new("/bin/busybox");
    let binary = fs::read(busybox).context("reading /bin/busybox (install busybox)")?;
    let ldd = Command::new("ldd")
        .arg(busybox)
        .output()
        .context("ldd /bin/busybox")?;
    if !ldd.status.success() {
        bail!(
            "ldd /bin/busybox failed: the image needs Debian's dynamic busybox, not busybox-static"
        );
    }
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    if !list.status.success() {
        bail!("busybox --list-full failed");
    }
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, and the loader
    // as `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
    let mut libraries = Vec::new();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd /bin/busybox: {line}");
        }
        let path = line.split_once("=> ").map_or(line, |(_, path)| path);
        if let Some((path, _)) = path.split_once(" (")
            && path.starts_with('/')
        {
            libraries.push(path.trim_start_matches('/').to_owned());
        }
    }
    let mut layer = Layer::default();
    let lib_dirs: BTreeSet<&str> = libraries
        .iter()
        .flat_map(|lib| Path::new(lib).ancestors().skip(1))
        .filter_map(Path::to_str)
        .filter(|dir| !dir.is_empty())
        .collect();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "var", "home",
    ]
    .into_iter()
    .chain(lib_dirs)
    {
        layer.dir(dir, 0o755)?;
    }
    layer.dir("tmp", 0o1777)?;
    layer.file("bin/busybox", &binary, 0o755)?;
    for lib in &libraries {
        let data = fs::read(Path::new("/").join(lib)).with_context(|| format!("reading /{lib}"))?;
        layer.file(lib, &data, 0o755)?;
    }
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        0o644,
    )?;
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644)?;
    layer.file("etc/nsswitch.conf", NSSWITCH_CONF.as_bytes(), 0o644)?;
    // In a pod the runtime mounts its own /etc/hosts (and resolv.conf) here.
    layer.file(
        "etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        if applet.ends_with("/nslookup") {
            layer.file(applet, NSLOOKUP.as_bytes(), 0o755)?;
        } else if applet.ends_with("/wget") {
            layer.file(applet, WGET.as_bytes(), 0o755)?;
        } else {
            layer.symlink(applet, "/bin/busybox")?;
        }
    }
    Ok(layer)
}

/// The busybox layer with kubectl (a static Go binary) at
/// `/usr/local/bin/kubectl`, on busybox's `$PATH`.
fn kubectl_layer(root: &Path) -> anyhow::Result<Layer> {
    let path = root.join(".cache/bin/kubectl");
    let binary = fs::read(&path)
        .with_context(|| format!("reading {} (run `cargo xtask setup`)", path.display()))?;
    let mut layer = busybox_layer()?;
    layer.dir("usr/local", 0o755)?;
    layer.dir("usr/local/bin", 0o755)?;
    layer.file("usr/local/bin/kubectl", &binary, 0o755)?;
    Ok(layer)
}

/// Only the NSS sources built into glibc; see [`busybox_layer`].
const NSSWITCH_CONF: &str = "\
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
";

/// `wget` whose `-T SECS` works. Debian's busybox before 1.36.1-5 is built
/// without `FEATURE_WGET_TIMEOUT`, yet still accepts `-T` and writes its
/// value through a null pointer: `wget -T 5 URL` segfaults. This turns
/// `-T SECS`, `-TSECS` and `--timeout=SECS` into busybox's `timeout SECS`
/// around the real wget, which is what the flag means; every other argument
/// passes through unchanged.
const WGET: &str = r#"#!/bin/sh
# wget [ARGS]: busybox wget, with -T/--timeout applied by `timeout`.
t=
n=$#
while [ "$n" -gt 0 ]; do
	a=$1; shift; n=$((n - 1))
	case $a in
	-T) t=$1; shift; n=$((n - 1)) ;;
	-T*) t=${a#-T} ;;
	--timeout=*) t=${a#--timeout=} ;;
	*) set -- "$@" "$a" ;;
	esac
done
[ -n "$t" ] && exec /bin/busybox timeout "$t" /bin/busybox wget "$@"
exec /bin/busybox wget "$@"
"#;

/// `nslookup` with the resolver's search rules. busybox's own nslookup does
/// its own DNS (it honours resolv.conf's nameserver) but appends the search
/// domains only to names without a dot, asks all of them at once and fails
/// if any fails, so in a pod `nslookup web` exits 1 and `nslookup
/// kubernetes.default` finds nothing. This tries the candidates the way
/// glibc's res_search does (search domains first unless the name has at
/// least `ndots` dots, the name itself first otherwise), each alone so that
/// busybox appends nothing, and stops at the first answer (as for busybox,
/// an empty NOERROR counts as one). Names ending in a dot and IP addresses
/// (PTR queries) go to busybox unchanged.
const NSLOOKUP: &str = r#"#!/bin/sh
# nslookup [-opt[=val]]... NAME [SERVER]: busybox nslookup, with search and
# ndots from /etc/resolv.conf applied as the libc resolver applies them.
opts=
while [ "${1#-}" != "$1" ]; do opts="$opts $1"; shift; done
name=$1
case $name in
'' | *. | *:*) exec /bin/busybox nslookup $opts "$@" ;;
*[!0-9.]*) ;;
*) exec /bin/busybox nslookup $opts "$@" ;; # an IPv4 address
esac
shift
search= ndots=1
if [ -r /etc/resolv.conf ]; then
	while read -r key rest; do
		case $key in
		search | domain) search=$rest ;;
		options) for o in $rest; do case $o in ndots:*) ndots=${o#ndots:} ;; esac; done ;;
		esac
	done </etc/resolv.conf
fi
dots=0 rest=$name
while [ "${rest#*.}" != "$rest" ]; do rest=${rest#*.} dots=$((dots + 1)); done
# A name without a dot gets a final one, or busybox would search again.
self=$name
[ "$dots" -gt 0 ] || self=$name.
list=
for d in $search; do list="$list $name.$d"; done
if [ "$dots" -ge "$ndots" ]; then list="$self $list"; else list="$list $self"; fi
failed=
for fqdn in $list; do
	if out=$(/bin/busybox nslookup $opts "$fqdn" "$@"); then
		printf '%s\n' "$out"
		exit 0
	fi
	[ "$fqdn" = "$self" ] && failed=$out
	# Like res_search: only a server's "no such name" moves on to the next.
	case $out in *"server can't find"*) ;; *) break ;; esac
done
printf '%s\n' "${failed:-$out}"
exit 1
"#;

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
    // One index entry per reference, all the same manifest: `ctr images
    // import` creates an image for every entry, named by its
    // `io.containerd.image.name` (the OCI `ref.name` is only the tag).
    let manifests: Vec<_> = spec
        .references
        .iter()
        .map(|reference| {
            let tag = reference.rsplit_once(':').map_or("latest", |(_, t)| t);
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(&manifest),
                "size": manifest.len(),
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            })
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
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
        spec.references.join(", "),
        path.display(),
        layer_gz.len()
    );
    Ok(())
}
