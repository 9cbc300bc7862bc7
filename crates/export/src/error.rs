use std::path::PathBuf;

/// Everything an exporter can fail with. Messages say what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot {action} {path}: {source}; check that the directory exists and is writable")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("gzip {direction} failed: {source}")]
    Gzip {
        direction: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("the bytes are not a pprof profile: {0}")]
    Decode(#[from] prost::DecodeError),

    #[error("inferno could not render the flamegraph: {0}; the input must be folded stacks (`a;b;c 42` per line)")]
    Flamegraph(#[source] std::io::Error),

    #[error("invalid configuration for exporter `{kind}`: {message}")]
    Config { kind: String, message: String },

    #[error("unknown output format `{format}`; known formats: {known}")]
    UnknownFormat { format: String, known: String },

    #[error("unknown exporter `{kind}`; known exporters: {known}")]
    UnknownExporter { kind: String, known: String },

    #[error("a report of {bytes} bytes is larger than {setting} = {max_bytes}; raise {setting} so at least one report fits")]
    ReportTooLarge {
        bytes: u64,
        max_bytes: u64,
        setting: &'static str,
    },

    #[error("the OTLP sender thread is gone ({0}); the exporter must be rebuilt")]
    SenderGone(String),

    #[error("shutdown deadline passed with {pending} OTLP request(s) unsent; they were dropped")]
    ShutdownTimedOut { pending: usize },
}

impl ExportError {
    pub(crate) fn config(kind: &str, message: impl Into<String>) -> Self {
        ExportError::Config {
            kind: kind.to_string(),
            message: message.into(),
        }
    }
}
