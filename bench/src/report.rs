//! What every benchmark shares: summaries over repetitions, percentiles, and
//! writing one section of docs/benchmarks.md.

use std::time::Duration;

use anyhow::{Context as _, Result};

/// Median, minimum and maximum of one figure over the repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Summary {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Summary {
            median,
            min: values.first().copied().unwrap_or(0.0),
            max: values.last().copied().unwrap_or(0.0),
        }
    }

    pub fn cell(&self, digits: usize) -> String {
        format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// Nearest-rank percentile `p` (0-100) of sorted durations, in milliseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Replaces the "## Store" section of the markdown document at `path` with
/// `section`, or appends it; creates the file if needed.
pub fn write_section(path: &std::path::Path, heading: &str, section: &str) -> Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = String::new();
    let mut lines = old.lines().peekable();
    let mut replaced = false;
    while let Some(line) = lines.next() {
        if line.trim_end() == heading {
            // Skip the old section up to the next heading of the same level.
            while lines.peek().is_some_and(|l| !l.starts_with("## ")) {
                lines.next();
            }
            out.push_str(section);
            replaced = true;
            if lines.peek().is_some() {
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !replaced {
        out.push('\n');
        out.push_str(section);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Print a benchmark's section and, if `path` is given, write it there
/// under `heading`.
pub fn publish(section: &str, heading: &str, path: Option<&std::path::Path>) -> Result<()> {
    println!("{section}");
    if let Some(path) = path {
        write_section(path, heading, section)
            .with_context(|| format!("updating {}", path.display()))?;
    }
    Ok(())
}

/// "<cpus> × <CPU model>" of this machine.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpus} × {model}")
}

/// A command's trimmed stdout, or "unknown".
pub fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Resident memory of process `pid`, MiB (0 when it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_median_min_max() {
        let s = Summary::of(vec![5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50.0), 50.0);
        assert_eq!(percentile(&ms, 99.0), 99.0);
        assert_eq!(percentile(&ms[..1], 99.0), 1.0);
    }

    #[test]
    fn write_section_replaces_only_the_store_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("benchmarks.md");
        std::fs::write(
            &path,
            "# Benchmarks\n\n## Store\n\nold\n\n## Dataplane\n\nkeep\n",
        )
        .expect("write");
        write_section(&path, "## Store", "## Store\n\nnew\n").expect("update");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("new") && !text.contains("old"), "{text}");
        assert!(text.contains("## Dataplane\n\nkeep"), "{text}");

        let fresh = dir.path().join("docs/fresh.md");
        write_section(&fresh, "## Store", "## Store\n\nfirst\n").expect("create");
        let text = std::fs::read_to_string(&fresh).expect("read");
        assert!(
            text.starts_with("# Benchmarks\n") && text.contains("first"),
            "{text}"
        );
    }
}
