//! What the guest's /init (guest/init.sh) prints on the serial console, parsed.
//!
//! The guest writes three kinds of marker lines:
//!
//! * `@@KVT-EVENT <text>@@`: a step happened (`rc record 0`, `cpu-online 2`, …);
//! * `@@KVT-BEGIN <name> <bytes>@@`, base64 lines, `@@KVT-END <name>@@`: a file.
//!
//! Markers may follow terminal escape sequences on the same line (QEMU's
//! `-nographic` and the firmware print some), so they are searched for
//! anywhere in a line. A file whose base64 does not decode, or whose decoded
//! length differs from the announced one, was torn by an interleaved kernel
//! message: it is reported as a problem, never silently accepted.

use std::collections::BTreeMap;

use base64::Engine;

const EVENT: &str = "@@KVT-EVENT ";
const BEGIN: &str = "@@KVT-BEGIN ";
const END: &str = "@@KVT-END ";
const CLOSE: &str = "@@";

/// Everything recovered from one guest's console.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GuestOutput {
    /// Files by name (`plan`, `stats`, `record-log`, …), decoded.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Event texts in the order printed.
    pub events: Vec<String>,
    /// Transfer problems: torn or unterminated files.
    pub problems: Vec<String>,
}

impl GuestOutput {
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// The exit status the guest reported for `step` (`rc <step> <n>`).
    pub fn exit_code(&self, step: &str) -> Option<i32> {
        self.events.iter().find_map(|event| {
            let rest = event.strip_prefix("rc ")?.strip_prefix(step)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// The arguments of every event whose first word is `kind`.
    pub fn events_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.events.iter().filter_map(move |event| {
            let rest = event.strip_prefix(kind)?;
            if rest.is_empty() {
                Some(rest)
            } else {
                rest.strip_prefix(' ')
            }
        })
    }

    /// True when the guest reached the end of its script.
    pub fn finished(&self) -> bool {
        self.events.iter().any(|event| event == "done")
    }
}

/// The text between `open` and the next `@@` in `line`, if `line` holds the marker.
fn marker<'a>(line: &'a str, open: &str) -> Option<&'a str> {
    let start = line.find(open)? + open.len();
    let rest = &line[start..];
    let end = rest.find(CLOSE)?;
    Some(&rest[..end])
}

struct OpenFile {
    name: String,
    announced_len: usize,
    base64: String,
    stray_lines: usize,
}

/// Parses a whole console transcript.
pub fn parse(console: &str) -> GuestOutput {
    let mut out = GuestOutput::default();
    let mut open: Option<OpenFile> = None;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(mut file) = open.take() {
            match marker(line, END) {
                Some(name) if name == file.name => finish(&mut out, file),
                Some(other) => {
                    out.problems.push(format!(
                        "file {:?} ended by the end marker of {other:?}",
                        file.name
                    ));
                }
                None => {
                    let text = line.trim();
                    if is_base64_line(text) {
                        file.base64.push_str(text);
                    } else {
                        file.stray_lines += 1;
                    }
                    open = Some(file);
                }
            }
            continue;
        }
        if let Some(event) = marker(line, EVENT) {
            out.events.push(event.to_owned());
        } else if let Some(header) = marker(line, BEGIN) {
            match header.rsplit_once(' ') {
                Some((name, len)) => match len.parse() {
                    Ok(announced_len) => {
                        open = Some(OpenFile {
                            name: name.to_owned(),
                            announced_len,
                            base64: String::new(),
                            stray_lines: 0,
                        })
                    }
                    Err(_) => out
                        .problems
                        .push(format!("file header {header:?} has no byte count")),
                },
                None => out
                    .problems
                    .push(format!("file header {header:?} has no byte count")),
            }
        }
    }
    if let Some(file) = open {
        out.problems.push(format!(
            "file {:?} has no end marker: the guest stopped while printing it",
            file.name
        ));
    }
    out
}

/// The first line of a guest kernel crash in the console, without its
/// timestamp: an Oops, a BUG or a panic. The guest runs with `printk` at 1, so
/// these (KERN_EMERG/ALERT) still reach the console.
pub fn guest_kernel_crash(console: &str) -> Option<String> {
    const SIGNS: [&str; 4] = ["Oops:", "BUG:", "Kernel panic", "general protection fault"];
    console.lines().find_map(|line| {
        let text = match line.trim_start().strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or(rest, |(_, after)| after),
            None => line,
        }
        .trim();
        SIGNS
            .iter()
            .any(|sign| text.starts_with(sign))
            .then(|| text.to_owned())
    })
}

fn is_base64_line(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

fn finish(out: &mut GuestOutput, file: OpenFile) {
    match base64::engine::general_purpose::STANDARD.decode(&file.base64) {
        Ok(bytes) if bytes.len() == file.announced_len && file.stray_lines == 0 => {
            out.files.insert(file.name, bytes);
        }
        Ok(bytes) => out.problems.push(format!(
            "file {:?} torn on the console: {} bytes announced, {} decoded, {} foreign lines inside",
            file.name,
            file.announced_len,
            bytes.len(),
            file.stray_lines
        )),
        Err(e) => out.problems.push(format!(
            "file {:?} torn on the console: base64 does not decode ({e}), {} foreign lines inside",
            file.name, file.stray_lines
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(bytes: &[u8]) -> String {
        // busybox base64 wraps at 76 columns; so does this.
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        text.as_bytes()
            .chunks(76)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn recovers_files_and_events_between_markers() {
        let stats = br#"{"online_cpus": 2, "padding": "a long line that wraps over several base64 lines, longer than 76"}"#;
        let console = format!(
            "\x1b[?7l\x1b[2JSeaBIOS\r\n@@KVT-EVENT boot 6.1.0 online=0-1@@\r\n@@KVT-EVENT rc record 0@@\r\n@@KVT-BEGIN stats {}@@\r\n{}\r\n@@KVT-END stats@@\r\n@@KVT-EVENT done@@\r\n",
            stats.len(),
            encode(stats).replace('\n', "\r\n")
        );
        let out = parse(&console);
        assert_eq!(out.problems, Vec::<String>::new());
        assert_eq!(out.file("stats"), Some(&stats[..]));
        assert_eq!(out.exit_code("record"), Some(0));
        assert_eq!(out.exit_code("plan"), None);
        assert_eq!(
            out.events_of("boot").collect::<Vec<_>>(),
            ["6.1.0 online=0-1"]
        );
        assert!(out.finished());
    }

    #[test]
    fn a_marker_after_escape_sequences_on_the_same_line_is_found() {
        let out = parse("\x1b[2J\x1b[?7l@@KVT-EVENT cpu-online 3@@\n");
        assert_eq!(out.events_of("cpu-online").collect::<Vec<_>>(), ["3"]);
    }

    #[test]
    fn an_interleaved_kernel_message_tears_the_file() {
        let body = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let encoded = encode(body);
        let (first, second) = encoded.split_at(40);
        let console = format!(
            "@@KVT-BEGIN plan {}@@\n{first}\n[   12.345678] CPU2 has been hot-added\n{second}\n@@KVT-END plan@@\n",
            body.len()
        );
        let out = parse(&console);
        assert_eq!(out.file("plan"), None);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(out.problems[0].contains("torn"), "{}", out.problems[0]);
    }

    #[test]
    fn a_wrong_length_is_a_torn_file_and_a_missing_end_is_reported() {
        let out = parse(&format!(
            "@@KVT-BEGIN stats 5@@\n{}\n@@KVT-END stats@@\n@@KVT-BEGIN record-log 3@@\nYWJj\n",
            encode(b"four")
        ));
        assert_eq!(out.files.len(), 0);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].contains("5 bytes announced, 4 decoded"));
        assert!(out.problems[1].contains("no end marker"));
        assert!(!out.finished());
    }

    #[test]
    fn an_empty_file_is_a_file() {
        let out = parse("@@KVT-BEGIN plan-log 0@@\n@@KVT-END plan-log@@\n");
        assert_eq!(out.file("plan-log"), Some(&b""[..]));
    }

    #[test]
    fn a_guest_kernel_oops_is_found_and_markers_are_not() {
        let console =
            "@@KVT-EVENT boot 6.12@@\n[   13.114583] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                       [   13.116659] RIP: 0010:__schedule+0x339/0xbf0\n\
                       [   13.123335] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert_eq!(
            guest_kernel_crash(console).as_deref(),
            Some("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        assert_eq!(
            guest_kernel_crash("@@KVT-EVENT boot@@\nOOPS is not a crash\nrecording\n"),
            None
        );
    }
}
