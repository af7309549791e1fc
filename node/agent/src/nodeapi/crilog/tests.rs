use super::*;

const LOG: &str = "\
2026-11-22T05:00:00.1Z stdout F one
2026-11-22T05:00:01.000000002Z stderr P tw
2026-11-22T05:00:01.5Z stdout F three
2026-11-22T05:00:02Z stderr F o
2026-11-22T05:00:03+00:00 stdout F 
2026-11-22T05:00:04Z stdout F four has  spaces
";

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn texts(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.text).into_owned())
        .collect()
}

#[test]
fn records_parse() {
    let r = parse_record(b"2026-11-22T05:00:00.123456789Z stderr P a b").expect("parse");
    assert_eq!(r.time_text, "2026-11-22T05:00:00.123456789Z");
    assert_eq!(r.stream, Stream::Stderr);
    assert!(r.partial);
    assert_eq!(r.text, b"a b");
    // A full record with empty text, with or without the separator.
    assert_eq!(
        parse_record(b"2026-11-22T05:00:00Z stdout F")
            .expect("parse")
            .text,
        b""
    );
    assert!(matches!(
        parse_record(b"yesterday stdout F x"),
        Err(ParseError::Time(_))
    ));
    assert!(matches!(
        parse_record(b"2026-11-22T05:00:00Z stdin F x"),
        Err(ParseError::Stream(_))
    ));
    assert!(matches!(
        parse_record(b"2026-11-22T05:00:00Z stdout X x"),
        Err(ParseError::Tag(_))
    ));
    assert_eq!(parse_record(b"2026"), Err(ParseError::Truncated));
}

#[test]
fn partial_records_join_per_stream_with_the_first_timestamp() {
    let mut j = LineJoiner::default();
    let lines = j.feed(LOG.as_bytes());
    assert_eq!(
        texts(&lines),
        ["one\n", "three\n", "two\n", "\n", "four has  spaces\n"]
    );
    assert_eq!(lines[2].time_text, "2026-11-22T05:00:01.000000002Z");
    assert_eq!(j.malformed, 0);
}

#[test]
fn chunks_split_anywhere_give_the_same_lines() {
    let whole = LineJoiner::default().feed(LOG.as_bytes());
    for cut in 0..LOG.len() {
        let mut j = LineJoiner::default();
        let mut lines = j.feed(&LOG.as_bytes()[..cut]);
        lines.extend(j.feed(&LOG.as_bytes()[cut..]));
        assert_eq!(lines, whole, "cut at {cut}");
    }
}

#[test]
fn malformed_records_are_skipped() {
    let mut j = LineJoiner::default();
    let lines = j.feed(b"garbage\n2026-11-22T05:00:00Z stdout F ok\n");
    assert_eq!(texts(&lines), ["ok\n"]);
    assert_eq!(j.malformed, 1);
}

fn tail(lines: &[LogLine], n: u64) -> Vec<LogLine> {
    let mut t = Tail::new(n);
    // In two pushes, as reads from a file come.
    let (a, b) = lines.split_at(lines.len() / 2);
    t.push(a.to_vec());
    t.push(b.to_vec());
    t.lines().cloned().collect()
}

#[test]
fn tail_keeps_the_last_lines() {
    let lines = LineJoiner::default().feed(LOG.as_bytes());
    assert_eq!(texts(&tail(&lines, 2)), ["\n", "four has  spaces\n"]);
    assert!(tail(&lines, 0).is_empty());
    assert_eq!(tail(&lines, 100).len(), 5);
}

#[test]
fn timestamps_prefix_the_written_time() {
    let lines = LineJoiner::default().feed(LOG.as_bytes());
    let opts = LogOptions {
        timestamps: true,
        ..Default::default()
    };
    let out = Output::new(&opts).render(&lines[..2]);
    assert_eq!(
        &out[..],
        b"2026-11-22T05:00:00.1Z one\n2026-11-22T05:00:01.5Z three\n"
    );
}

#[test]
fn since_drops_older_lines() {
    let lines = LineJoiner::default().feed(LOG.as_bytes());
    let opts = LogOptions {
        since: Some(ts("2026-11-22T05:00:01.5Z")),
        ..Default::default()
    };
    // "two" started at 05:00:01.000000002, before the cut.
    let out = Output::new(&opts).render(&lines);
    assert_eq!(&out[..], b"three\n\nfour has  spaces\n");
}

#[test]
fn limit_bytes_cuts_mid_line_and_stops() {
    let lines = LineJoiner::default().feed(LOG.as_bytes());
    let opts = LogOptions {
        limit_bytes: Some(6),
        ..Default::default()
    };
    let mut out = Output::new(&opts);
    assert_eq!(&out.render(&lines)[..], b"one\nth");
    assert!(out.done());
    assert!(out.render(&lines).is_empty());
}

#[test]
fn query_parsing_follows_upstream() {
    let now = ts("2026-11-22T05:00:00Z");
    let o = LogOptions::from_query(
        "follow=true&tailLines=3&timestamps=1&previous=false&limitBytes=10&sinceSeconds=60",
        now,
    )
    .expect("parse");
    assert_eq!(
        o,
        LogOptions {
            follow: true,
            tail_lines: Some(3),
            timestamps: true,
            previous: false,
            since: Some(ts("2026-11-22T04:59:00Z")),
            limit_bytes: Some(10),
        }
    );
    let o = LogOptions::from_query("sinceTime=2026-11-22T04:00:00Z", now).expect("parse");
    assert_eq!(o.since, Some(ts("2026-11-22T04:00:00Z")));
    for bad in [
        "tailLines=-1",
        "tailLines=x",
        "limitBytes=0",
        "sinceSeconds=0",
        "follow=yes",
        "sinceTime=yesterday",
        "sinceSeconds=5&sinceTime=2026-11-22T04:00:00Z",
    ] {
        assert!(LogOptions::from_query(bad, now).is_err(), "{bad}");
    }
    assert_eq!(
        LogOptions::from_query("", now).expect("empty"),
        LogOptions::default()
    );
}
