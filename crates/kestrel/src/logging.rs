//! tracing-subscriber setup: RUST_LOG or `--log-level`/`log.level`, human or JSON,
//! always to stderr so stdout stays clean for `--json` output.

use anyhow::{bail, Result};
use tracing_subscriber::EnvFilter;

use crate::cli::LogArgs;
use crate::config::Config;

pub fn init(config: &Config, args: &LogArgs) -> Result<()> {
    let level = args
        .log_level
        .clone()
        .unwrap_or_else(|| config.log.level.clone());
    let format = args
        .log_format
        .clone()
        .unwrap_or_else(|| config.log.format.clone());
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={spec:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(default_directives(&level)).map_err(|e| {
            anyhow::anyhow!(
                "log level {level:?} is not valid ({e}): use error, warn, info, debug or trace"
            )
        })?,
    };
    // Colours only for a person at a terminal (and never when NO_COLOR is set):
    // journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format.as_str() {
        "human" => builder.try_init(),
        "json" => builder.json().try_init(),
        other => bail!("log format {other:?} is not valid: use human or json"),
    };
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = result;
    Ok(())
}

/// Kestrel's own lines at `level`; the cache library's internal lines (foyer's
/// recovery and flush chatter) only when asking for debug or trace. RUST_LOG
/// replaces all of this.
fn default_directives(level: &str) -> String {
    match level {
        "info" => "info,foyer=warn".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::default_directives;

    #[test]
    fn info_keeps_the_cache_library_quiet_but_debug_does_not() {
        assert_eq!(default_directives("info"), "info,foyer=warn");
        assert_eq!(default_directives("error"), "error");
        assert_eq!(default_directives("debug"), "debug");
    }
}
