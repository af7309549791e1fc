//! The CRI container log format and the kubelet's log options.
//!
//! containerd writes one record per line:
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>`. A line longer than
//! the runtime's buffer is split into partial (`P`) records ended by a full
//! (`F`) one; the text of an `F` record lacks its newline. What a client sees
//! is the joined lines, stdout and stderr interleaved in file order, each
//! optionally prefixed with the timestamp of its first record.

use std::collections::VecDeque;

use bytes::{BufMut as _, Bytes, BytesMut};
use jiff::Timestamp;

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The timestamp as written (what `timestamps=true` prints).
    pub time_text: &'a str,
    /// The timestamp, parsed.
    pub time: Timestamp,
    /// Which stream the text came from.
    pub stream: Stream,
    /// Whether more records continue this line.
    pub partial: bool,
    /// The text, without the record's newline.
    pub text: &'a [u8],
}

/// A container output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Why a record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field separator is missing.
    #[error("truncated record")]
    Truncated,
    /// The timestamp is not RFC 3339.
    #[error("bad timestamp {0:?}")]
    Time(String),
    /// The stream is neither `stdout` nor `stderr`.
    #[error("bad stream {0:?}")]
    Stream(String),
    /// The tag is neither `P` nor `F`.
    #[error("bad tag {0:?}")]
    Tag(String),
}

/// Parse one record (without its trailing newline).
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, ParseError> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = fields.next().ok_or(ParseError::Truncated)?;
    let stream = fields.next().ok_or(ParseError::Truncated)?;
    let tag = fields.next().ok_or(ParseError::Truncated)?;
    // A full record with empty text may end right after the tag.
    let text = fields.next().unwrap_or_default();
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let time_text = std::str::from_utf8(time).map_err(|_| ParseError::Time(lossy(time)))?;
    let parsed: Timestamp = time_text
        .parse()
        .map_err(|_| ParseError::Time(time_text.to_owned()))?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => return Err(ParseError::Stream(lossy(other))),
    };
    let partial = match tag {
        b"P" => true,
        b"F" => false,
        other => return Err(ParseError::Tag(lossy(other))),
    };
    Ok(Record {
        time_text,
        time: parsed,
        stream,
        partial,
        text,
    })
}

/// One joined line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Timestamp of the line's first record, as written.
    pub time_text: String,
    /// The same, parsed.
    pub time: Timestamp,
    /// The text, ending in a newline.
    pub text: Vec<u8>,
}

#[derive(Debug, Default)]
struct Pending {
    first: Option<(String, Timestamp)>,
    text: Vec<u8>,
}

/// Turns the bytes of a log file, fed in any chunks, into joined lines.
#[derive(Debug, Default)]
pub struct LineJoiner {
    /// Bytes after the last newline seen.
    rest: Vec<u8>,
    /// Partial lines, per stream (they may interleave).
    stdout: Pending,
    stderr: Pending,
    /// Records that did not parse (skipped, as the kubelet does).
    pub malformed: u64,
}

impl LineJoiner {
    /// Feed bytes; returns the lines they complete.
    pub fn feed(&mut self, mut buf: &[u8]) -> Vec<LogLine> {
        let mut out = Vec::new();
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            if self.rest.is_empty() {
                self.record(&buf[..nl], &mut out);
            } else {
                let mut line = std::mem::take(&mut self.rest);
                line.extend_from_slice(&buf[..nl]);
                self.record(&line, &mut out);
            }
            buf = &buf[nl + 1..];
        }
        self.rest.extend_from_slice(buf);
        out
    }

    fn record(&mut self, line: &[u8], out: &mut Vec<LogLine>) {
        let Ok(r) = parse_record(line) else {
            self.malformed += 1;
            return;
        };
        let pending = match r.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let (time_text, time) = pending
            .first
            .take()
            .unwrap_or_else(|| (r.time_text.to_owned(), r.time));
        pending.text.extend_from_slice(r.text);
        if r.partial {
            pending.first = Some((time_text, time));
        } else {
            let mut text = std::mem::take(&mut pending.text);
            text.push(b'\n');
            out.push(LogLine {
                time_text,
                time,
                text,
            });
        }
    }
}

/// The kubelet's log options (`PodLogOptions` minus the container).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming until the container exits.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// The previous instance of the container.
    pub previous: bool,
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parse a query string with upstream's parameter names and rules:
    /// `follow`, `tailLines` (≥ 0), `timestamps`, `previous`,
    /// `sinceSeconds` (≥ 1) or `sinceTime` (RFC 3339, not both),
    /// `limitBytes` (≥ 1).
    pub fn from_query(query: &str, now: Timestamp) -> Result<Self, String> {
        let mut o = Self::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "follow" => o.follow = parse_bool(&k, &v)?,
                "timestamps" => o.timestamps = parse_bool(&k, &v)?,
                "previous" => o.previous = parse_bool(&k, &v)?,
                "tailLines" => {
                    let n: i64 = parse_int(&k, &v)?;
                    if n < 0 {
                        return Err(format!(
                            "tailLines: Invalid value: {n}: must be greater than or equal to 0"
                        ));
                    }
                    o.tail_lines = Some(n.unsigned_abs());
                }
                "limitBytes" => {
                    let n: i64 = parse_int(&k, &v)?;
                    if n < 1 {
                        return Err(format!(
                            "limitBytes: Invalid value: {n}: must be greater than 0"
                        ));
                    }
                    o.limit_bytes = Some(n.unsigned_abs());
                }
                "sinceSeconds" => {
                    let n: i64 = parse_int(&k, &v)?;
                    if n < 1 {
                        return Err(format!(
                            "sinceSeconds: Invalid value: {n}: must be greater than 0"
                        ));
                    }
                    since_seconds = Some(n);
                }
                "sinceTime" => {
                    let t: Timestamp = v
                        .parse()
                        .map_err(|_| format!("sinceTime: Invalid value: {v:?}: not RFC 3339"))?;
                    since_time = Some(t);
                }
                _ => {}
            }
        }
        o.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into());
            }
            (Some(s), None) => Some(
                now.checked_sub(jiff::SignedDuration::from_secs(s))
                    .unwrap_or(Timestamp::MIN),
            ),
            (None, t) => t,
        };
        Ok(o)
    }
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    // Go's strconv.ParseBool, which the query decoder uses; a bare `?follow`
    // means true.
    match v {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{k}: invalid boolean value {v:?}")),
    }
}

fn parse_int(k: &str, v: &str) -> Result<i64, String> {
    v.parse()
        .map_err(|_| format!("{k}: invalid integer value {v:?}"))
}

/// Applies `since`, `timestamps` and `limitBytes` to lines as they come.
#[derive(Debug)]
pub struct Output {
    since: Option<Timestamp>,
    timestamps: bool,
    left: Option<u64>,
}

impl Output {
    /// An output for these options.
    pub fn new(opts: &LogOptions) -> Self {
        Self {
            since: opts.since,
            timestamps: opts.timestamps,
            left: opts.limit_bytes,
        }
    }

    /// Whether `limitBytes` has been reached.
    pub fn done(&self) -> bool {
        self.left == Some(0)
    }

    /// The bytes to send for these lines (empty when none qualify).
    pub fn render<'a>(&mut self, lines: impl IntoIterator<Item = &'a LogLine>) -> Bytes {
        let mut out = BytesMut::new();
        for line in lines {
            if self.done() {
                break;
            }
            if self.since.is_some_and(|s| line.time < s) {
                continue;
            }
            let start = out.len();
            if self.timestamps {
                out.put_slice(line.time_text.as_bytes());
                out.put_u8(b' ');
            }
            out.put_slice(&line.text);
            if let Some(left) = &mut self.left {
                let wrote = (out.len() - start) as u64;
                if wrote >= *left {
                    // Cut mid-line, as the kubelet's limited writer does.
                    out.truncate(start + usize::try_from(*left).unwrap_or(usize::MAX));
                    *left = 0;
                } else {
                    *left -= wrote;
                }
            }
        }
        out.freeze()
    }
}

/// Keeps the last `n` lines of what it is fed (`tailLines`).
#[derive(Debug)]
pub struct Tail {
    keep: usize,
    lines: VecDeque<LogLine>,
}

impl Tail {
    /// Keep the last `n` lines.
    pub fn new(n: u64) -> Self {
        Self {
            keep: usize::try_from(n).unwrap_or(usize::MAX),
            lines: VecDeque::new(),
        }
    }

    /// Add lines, forgetting the oldest beyond `n`.
    pub fn push(&mut self, lines: Vec<LogLine>) {
        self.lines.extend(lines);
        while self.lines.len() > self.keep {
            self.lines.pop_front();
        }
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &LogLine> {
        self.lines.iter()
    }
}

#[cfg(test)]
mod tests;
