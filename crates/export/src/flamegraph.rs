//! Flamegraph SVG from folded stacks, rendered by inferno.

use inferno::flamegraph::color::{MultiPalette, Palette};
use inferno::flamegraph::{self, Options};

use crate::ExportError;

/// Renders folded stacks as an interactive flamegraph SVG.
///
/// inferno refuses input without any count; an idle interval is normal for an agent,
/// so that case yields a small valid SVG that says "no samples" instead of an error.
pub fn flamegraph_svg(folded: &str, title: &str, count_name: &str) -> Result<Vec<u8>, ExportError> {
    if !has_counts(folded) {
        return Ok(no_samples_svg(title));
    }
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = count_name.to_string();
    // The java palette is the one that colours by the `_[k]`/`_[i]`/`_[j]` suffixes.
    options.colors = Palette::Multi(MultiPalette::Java);
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .map_err(ExportError::Flamegraph)?;
    Ok(svg)
}

/// Whether any line ends in a positive count, which is what inferno needs to draw.
fn has_counts(folded: &str) -> bool {
    folded.lines().any(|line| {
        line.trim_end()
            .rsplit_once(' ')
            .and_then(|(_, count)| count.parse::<f64>().ok())
            .is_some_and(|count| count > 0.0)
    })
}

fn no_samples_svg(title: &str) -> Vec<u8> {
    format!(
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="1200" height="90" viewBox="0 0 1200 90" xmlns="http://www.w3.org/2000/svg">"#,
            r##"<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>"##,
            r#"<text x="600" y="24" font-size="17" font-family="Verdana" text-anchor="middle">{title}</text>"#,
            r#"<text x="600" y="60" font-size="14" font-family="Verdana" text-anchor="middle">no samples</text>"#,
            "</svg>\n"
        ),
        title = xml_escape(title)
    )
    .into_bytes()
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folded::{folded, FoldedValue};
    use crate::test_profiles::{empty_profile, mixed_profile};
    use quick_xml::events::Event;
    use quick_xml::Reader;

    /// Parses the whole document, checking tags balance, and returns its text content.
    fn well_formed_text(svg: &[u8]) -> String {
        let mut reader = Reader::from_reader(svg);
        reader.config_mut().check_end_names = true;
        let mut buf = Vec::new();
        let mut depth = 0usize;
        let mut roots = 0;
        let mut text = String::new();
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(Event::Start(e)) => {
                    if depth == 0 {
                        roots += 1;
                        assert_eq!(e.name().as_ref(), b"svg");
                    }
                    depth += 1;
                }
                Ok(Event::End(_)) => {
                    depth -= 1;
                    text.push('\n');
                }
                Ok(Event::Text(t)) => text.push_str(&t.decode().expect("utf-8 text")),
                Ok(Event::GeneralRef(r)) => {
                    let name = r.decode().expect("utf-8 entity");
                    text.push_str(match name.as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("undeclared entity &{other};"),
                    });
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed at {}: {e}", reader.buffer_position()),
            }
            buf.clear();
        }
        assert_eq!(depth, 0, "unclosed elements");
        assert_eq!(roots, 1, "exactly one root element");
        text
    }

    #[test]
    fn renders_well_formed_svg_naming_the_functions() {
        let profile = mixed_profile();
        let stacks = folded(&profile, FoldedValue::CpuSamples);
        let svg = flamegraph_svg(&stacks, "CPU <testhost> & co", "samples").unwrap();
        let text = well_formed_text(&svg);
        assert!(text.contains("CPU <testhost> & co"));
        // inferno shows names without their `_[k]`/`_[i]` annotations (it colours by them).
        for name in [
            "main",
            "work",
            "compute",
            "inlined_leaf (30",
            "__x64_sys_read (5",
            "myprog",
        ] {
            assert!(text.contains(name), "{name} missing from the SVG");
        }
        let total = profile.totals().cpu_samples;
        assert!(text.contains(&format!("all ({total} samples")), "{text}");
    }

    #[test]
    fn empty_profile_gives_valid_svg_saying_no_samples() {
        let stacks = folded(&empty_profile(), FoldedValue::OffCpuNanoseconds);
        assert!(stacks.is_empty());
        let svg = flamegraph_svg(&stacks, "Off-CPU \"idle\"", "ns").unwrap();
        let text = well_formed_text(&svg);
        assert!(text.contains("no samples"));
        assert!(text.contains("Off-CPU \"idle\""));
    }
}
