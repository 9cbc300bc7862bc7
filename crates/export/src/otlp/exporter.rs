//! The OTLP gRPC exporter: a byte-bounded queue drained by a sender task on its own
//! thread and runtime, so `export` never waits on the network and a stuck collector
//! costs at most `max_queue_bytes` of memory.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kestrel_model::Profile;
use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message;
use serde::Deserialize;
use tokio::sync::Notify;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{to_otlp_request, ResourceInfo};
use crate::exporter::parse_config;
use crate::{ExportError, Exporter, ExporterStats};

const KIND: &str = "otlp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpCompression {
    #[default]
    Gzip,
    None,
}

/// `[exporters.otlp]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's gRPC address: `https://host:4317`, or `host:4317` (the scheme
    /// then follows `insecure`).
    pub endpoint: String,
    /// Plain-text HTTP/2 instead of TLS. TLS is the default.
    #[serde(default)]
    pub insecure: bool,
    /// A PEM file of extra CA certificates to trust, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// gRPC metadata sent with every request (e.g. an API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: OtlpCompression,
    /// Deadline of one attempt (connection included).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after the first attempt, for the status codes OTLP calls retryable.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Encoded bytes of reports waiting to be sent; past it the oldest are dropped.
    #[serde(default = "defaults::max_queue_bytes")]
    pub max_queue_bytes: u64,
    /// `service.name` of the resource.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
}

mod defaults {
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn max_retries() -> u32 {
        5
    }
    pub fn initial_backoff_ms() -> u64 {
        500
    }
    pub fn max_backoff_ms() -> u64 {
        30_000
    }
    pub fn max_queue_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn service_name() -> String {
        "kestrel".to_string()
    }
}

impl OtlpConfig {
    /// A configuration with every default and the given endpoint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            insecure: false,
            ca_file: None,
            headers: BTreeMap::new(),
            compression: OtlpCompression::default(),
            timeout_ms: defaults::timeout_ms(),
            max_retries: defaults::max_retries(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_queue_bytes: defaults::max_queue_bytes(),
            service_name: defaults::service_name(),
        }
    }
}

/// Adds the configured metadata to every request.
#[derive(Clone)]
struct HeaderInterceptor {
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl tonic::service::Interceptor for HeaderInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        for (key, value) in &self.headers {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

type Client = ProfilesServiceClient<InterceptedService<Channel, HeaderInterceptor>>;

/// What the sender needs, validated before any thread starts.
struct Connection {
    endpoint: Endpoint,
    interceptor: HeaderInterceptor,
    compression: Option<CompressionEncoding>,
}

fn prepare_connection(config: &OtlpConfig) -> Result<Connection, ExportError> {
    let url = match config.endpoint.split_once("://") {
        Some(("https", _)) if config.insecure => {
            return Err(ExportError::config(
                KIND,
                format!("endpoint `{}` uses https:// but insecure = true; use http:// or drop insecure", config.endpoint),
            ))
        }
        Some(("http", _)) if !config.insecure => {
            return Err(ExportError::config(
                KIND,
                format!(
                    "endpoint `{}` is plain http:// but TLS is on by default; use https://, or set insecure = true to send profiles unencrypted",
                    config.endpoint
                ),
            ))
        }
        Some(("http" | "https", _)) => config.endpoint.clone(),
        Some((scheme, _)) => {
            return Err(ExportError::config(
                KIND,
                format!("endpoint scheme `{scheme}` is not supported; use https:// (or http:// with insecure = true)"),
            ))
        }
        None if config.insecure => format!("http://{}", config.endpoint),
        None => format!("https://{}", config.endpoint),
    };
    if config.timeout_ms == 0 || config.max_queue_bytes == 0 {
        return Err(ExportError::config(
            KIND,
            "timeout_ms and max_queue_bytes must be at least 1",
        ));
    }
    if config.initial_backoff_ms > config.max_backoff_ms {
        return Err(ExportError::config(
            KIND,
            "initial_backoff_ms must not exceed max_backoff_ms",
        ));
    }
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            ExportError::config(KIND, format!("endpoint `{url}` is not a valid URI: {e}"))
        })?
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("kestrel/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| ExportError::config(KIND, format!("user agent rejected: {e}")))?;
    if !config.insecure {
        let mut tls = ClientTlsConfig::new().with_native_roots().timeout(timeout);
        if let Some(ca_file) = &config.ca_file {
            let pem = std::fs::read(ca_file).map_err(|source| ExportError::Io {
                action: "read ca_file",
                path: ca_file.clone(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ExportError::config(KIND, format!("TLS setup for `{url}` failed: {e}")))?;
    } else if config.ca_file.is_some() {
        return Err(ExportError::config(
            KIND,
            "ca_file is set but insecure = true disables TLS; drop one of them",
        ));
    }
    let mut headers = Vec::with_capacity(config.headers.len());
    for (name, value) in &config.headers {
        let key =
            AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ExportError::config(
                    KIND,
                    format!("header name `{name}` is not a valid gRPC metadata key"),
                )
            })?;
        // The value is not echoed: headers usually carry credentials.
        let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| {
            ExportError::config(
                KIND,
                format!("the value of header `{name}` is not printable ASCII"),
            )
        })?;
        headers.push((key, value));
    }
    Ok(Connection {
        endpoint,
        interceptor: HeaderInterceptor { headers },
        compression: match config.compression {
            OtlpCompression::Gzip => Some(CompressionEncoding::Gzip),
            OtlpCompression::None => None,
        },
    })
}

#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half the delay is fixed, half random,
    /// so agents that lost the same collector do not retry in lockstep.
    fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .initial_backoff
            .saturating_mul(1u32 << retry.min(20))
            .min(self.max_backoff);
        exponential.mul_f64(0.5 + 0.5 * crate::random::unit_fraction())
    }
}

/// The status codes the OTLP specification lists as retryable. RESOURCE_EXHAUSTED is
/// retryable only with RetryInfo, which this client does not parse, so it is final.
fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

struct QueuedRequest {
    request: ExportProfilesServiceRequest,
    bytes: u64,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<QueuedRequest>,
    queued_bytes: u64,
    in_flight: bool,
    /// Shutdown began: the sender drains the queue, then exits.
    closing: bool,
    /// The shutdown deadline passed: the sender abandons its request and exits.
    abort: bool,
    sender_exited: bool,
    exported: u64,
    failed: u64,
    dropped: u64,
}

struct Shared {
    state: Mutex<QueueState>,
    /// Wakes `shutdown` when the sender finishes a request or exits.
    progress: Condvar,
    /// Wakes the sender when a request is queued or shutdown begins.
    wake: Notify,
    /// Interrupts the sender's RPC or backoff when the shutdown deadline passes.
    abort: Notify,
}

impl Shared {
    /// Every critical section leaves the state consistent before anything that could
    /// panic, so a poisoned lock still guards valid counters.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Outcome {
    Sent,
    Failed,
    Aborted,
}

/// Sends reports to an OTLP Profiles collector over gRPC.
pub struct OtlpExporter {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
    max_queue_bytes: u64,
    service_name: String,
}

impl OtlpExporter {
    /// Validates `config` and starts the sender thread. Connecting is lazy: an
    /// unreachable collector is not an error here, only queued and retried.
    pub fn new(config: OtlpConfig) -> Result<Self, ExportError> {
        let connection = prepare_connection(&config)?;
        let policy = RetryPolicy {
            max_retries: config.max_retries,
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            progress: Condvar::new(),
            wake: Notify::new(),
            abort: Notify::new(),
        });
        let sender = spawn_sender(connection, policy, shared.clone())?;
        Ok(OtlpExporter {
            shared,
            sender: Some(sender),
            max_queue_bytes: config.max_queue_bytes,
            service_name: config.service_name,
        })
    }
}

fn spawn_sender(
    connection: Connection,
    policy: RetryPolicy,
    shared: Arc<Shared>,
) -> Result<JoinHandle<()>, ExportError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let thread_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("kestrel-otlp".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start its tokio runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async {
                // connect_lazy spawns the channel's worker, so it runs inside the runtime.
                let channel = connection.endpoint.connect_lazy();
                let mut client =
                    ProfilesServiceClient::with_interceptor(channel, connection.interceptor)
                        .accept_compressed(CompressionEncoding::Gzip);
                if let Some(encoding) = connection.compression {
                    client = client.send_compressed(encoding);
                }
                let _ = ready_tx.send(Ok(()));
                send_loop(client, policy, &thread_shared).await;
            });
            drop(runtime);
            thread_shared.lock().sender_exited = true;
            thread_shared.progress.notify_all();
        })
        .map_err(|e| ExportError::SenderGone(format!("cannot spawn the sender thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(message)) => Err(ExportError::SenderGone(message)),
        Err(_) => Err(ExportError::SenderGone(
            "the sender thread exited while starting".to_string(),
        )),
    }
}

async fn send_loop(mut client: Client, policy: RetryPolicy, shared: &Shared) {
    loop {
        let next = {
            let mut state = shared.lock();
            if state.abort {
                return;
            }
            match state.queue.pop_front() {
                Some(item) => {
                    state.queued_bytes -= item.bytes;
                    state.in_flight = true;
                    Some(item)
                }
                None if state.closing => return,
                None => None,
            }
        };
        let Some(item) = next else {
            // Notify keeps a permit when nobody waits, so a wake between the check
            // above and this await is not lost.
            shared.wake.notified().await;
            continue;
        };
        let outcome = send_with_retries(&mut client, &item.request, policy, shared).await;
        {
            let mut state = shared.lock();
            state.in_flight = false;
            match outcome {
                Outcome::Sent => state.exported += 1,
                Outcome::Failed => state.failed += 1,
                // Shutdown counted it as dropped when it gave up on it.
                Outcome::Aborted => {}
            }
        }
        shared.progress.notify_all();
    }
}

async fn send_with_retries(
    client: &mut Client,
    request: &ExportProfilesServiceRequest,
    policy: RetryPolicy,
    shared: &Shared,
) -> Outcome {
    let mut retry = 0;
    loop {
        let result = tokio::select! {
            result = client.export(request.clone()) => result,
            () = shared.abort.notified() => return Outcome::Aborted,
        };
        let status = match result {
            Ok(response) => {
                if let Some(partial) = response.into_inner().partial_success {
                    if partial.rejected_profiles > 0 || !partial.error_message.is_empty() {
                        tracing::warn!(
                            rejected_profiles = partial.rejected_profiles,
                            message = %partial.error_message,
                            "the OTLP collector accepted the report only in part"
                        );
                    }
                }
                return Outcome::Sent;
            }
            Err(status) => status,
        };
        if !is_retryable(status.code()) || retry >= policy.max_retries {
            tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                attempts = retry + 1,
                "OTLP export failed; the report is discarded"
            );
            return Outcome::Failed;
        }
        let delay = policy.backoff(retry);
        tracing::debug!(code = ?status.code(), message = status.message(), ?delay, "OTLP export will be retried");
        retry += 1;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.abort.notified() => return Outcome::Aborted,
        }
    }
}

impl Exporter for OtlpExporter {
    fn name(&self) -> &str {
        KIND
    }

    fn export(&mut self, profile: &Profile) -> Result<(), ExportError> {
        match &self.sender {
            Some(sender) if !sender.is_finished() => {}
            Some(_) => {
                return Err(ExportError::SenderGone(
                    "it stopped unexpectedly".to_string(),
                ))
            }
            None => return Err(ExportError::SenderGone("shutdown() was called".to_string())),
        }
        let request = to_otlp_request(
            profile,
            &ResourceInfo::from_host(&profile.host, &self.service_name),
        );
        let has_samples = request
            .resource_profiles
            .iter()
            .flat_map(|r| &r.scope_profiles)
            .flat_map(|s| &s.profiles)
            .any(|p| !p.samples.is_empty());
        if !has_samples {
            // An idle interval: nothing a collector could store.
            return Ok(());
        }
        let bytes = request.encoded_len() as u64;
        let mut state = self.shared.lock();
        if bytes > self.max_queue_bytes {
            state.dropped += 1;
            return Err(ExportError::ReportTooLarge {
                bytes,
                max_bytes: self.max_queue_bytes,
                setting: "max_queue_bytes",
            });
        }
        state.queue.push_back(QueuedRequest { request, bytes });
        state.queued_bytes += bytes;
        let mut evicted = 0;
        while state.queued_bytes > self.max_queue_bytes {
            // The loop only runs while the queue holds more bytes than the bound,
            // which needs at least one entry.
            let Some(oldest) = state.queue.pop_front() else {
                break;
            };
            state.queued_bytes -= oldest.bytes;
            state.dropped += 1;
            evicted += 1;
        }
        drop(state);
        if evicted > 0 {
            tracing::warn!(
                evicted,
                max_queue_bytes = self.max_queue_bytes,
                "OTLP queue full: dropped the oldest report(s); the collector is slow or unreachable"
            );
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    fn shutdown(&mut self, deadline: Duration) -> Result<(), ExportError> {
        let Some(sender) = self.sender.take() else {
            return Ok(());
        };
        let until = Instant::now() + deadline;
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();

        let mut state = self.shared.lock();
        while (!state.queue.is_empty() || state.in_flight) && !state.sender_exited {
            let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            state = self
                .shared
                .progress
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let pending = state.queue.len() + usize::from(state.in_flight);
        if pending > 0 {
            state.abort = true;
            state.dropped += pending as u64;
            state.queue.clear();
            state.queued_bytes = 0;
        }
        let exited = state.sender_exited;
        drop(state);
        self.shared.abort.notify_one();
        self.shared.wake.notify_one();
        if exited || sender.is_finished() {
            // It has returned (or is returning), so joining does not wait on the network.
            let _ = sender.join();
        }
        // Otherwise the thread is detached: its RPC and backoff both race the abort
        // signal, so it ends promptly without holding up the caller's deadline.
        if pending > 0 {
            return Err(ExportError::ShutdownTimedOut { pending });
        }
        Ok(())
    }

    fn stats(&self) -> ExporterStats {
        let state = self.shared.lock();
        ExporterStats {
            exported: state.exported,
            failed: state.failed,
            dropped: state.dropped,
            queued_bytes: state.queued_bytes,
        }
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut state = self.shared.lock();
            state.closing = true;
            state.abort = true;
            drop(state);
            self.shared.abort.notify_one();
            self.shared.wake.notify_one();
        }
    }
}

pub(crate) fn build_otlp(config: &serde_json::Value) -> Result<Box<dyn Exporter>, ExportError> {
    let config: OtlpConfig = parse_config(KIND, config)?;
    Ok(Box::new(OtlpExporter::new(config)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_caps() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
        };
        for retry in 0..10u32 {
            let nominal = Duration::from_millis((100u64 << retry).min(1_000));
            for _ in 0..50 {
                let delay = policy.backoff(retry);
                assert!(
                    delay >= nominal / 2 && delay <= nominal,
                    "retry {retry}: {delay:?}"
                );
            }
        }
        assert!(policy.backoff(u32::MAX) <= Duration::from_millis(1_000));
    }

    #[test]
    fn scheme_follows_insecure_and_contradictions_are_errors() {
        let secure = OtlpConfig::new("http://collector:4317");
        let message = prepare_connection(&secure).err().unwrap().to_string();
        assert!(message.contains("insecure = true"), "{message}");

        let insecure_https = OtlpConfig {
            insecure: true,
            ..OtlpConfig::new("https://collector:4317")
        };
        assert!(prepare_connection(&insecure_https).is_err());

        let bare = prepare_connection(&OtlpConfig::new("collector:4317")).unwrap();
        assert_eq!(bare.endpoint.uri().scheme_str(), Some("https"));
        let bare_insecure = OtlpConfig {
            insecure: true,
            ..OtlpConfig::new("collector:4317")
        };
        assert_eq!(
            prepare_connection(&bare_insecure)
                .unwrap()
                .endpoint
                .uri()
                .scheme_str(),
            Some("http")
        );
    }

    #[test]
    fn bad_headers_are_named_but_their_values_are_not_echoed() {
        let mut config = OtlpConfig::new("https://collector:4317");
        config
            .headers
            .insert("bad header".to_string(), "v".to_string());
        let message = prepare_connection(&config).err().unwrap().to_string();
        assert!(message.contains("`bad header`"), "{message}");

        let mut config = OtlpConfig::new("https://collector:4317");
        config
            .headers
            .insert("x-api-key".to_string(), "secret\n".to_string());
        let message = prepare_connection(&config).err().unwrap().to_string();
        assert!(
            message.contains("x-api-key") && !message.contains("secret"),
            "{message}"
        );
    }

    #[test]
    fn retryable_codes_follow_the_otlp_specification() {
        assert!(is_retryable(Code::Unavailable) && is_retryable(Code::DeadlineExceeded));
        assert!(!is_retryable(Code::InvalidArgument) && !is_retryable(Code::Unauthenticated));
        assert!(!is_retryable(Code::ResourceExhausted));
    }
}
