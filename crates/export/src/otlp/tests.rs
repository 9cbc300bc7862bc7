use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_server::{
    ProfilesService, ProfilesServiceServer,
};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::profiles::v1development as otlp;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::*;
use crate::test_profiles::{empty_profile, mixed_profile};
use crate::{ExportError, Exporter, OtlpConfig, OtlpExporter};

fn resource() -> ResourceInfo {
    ResourceInfo::from_host(&mixed_profile().host, "kestrel-test")
}

fn dictionary(request: &ExportProfilesServiceRequest) -> &otlp::ProfilesDictionary {
    request
        .dictionary
        .as_ref()
        .expect("the request carries a dictionary")
}

fn profiles(request: &ExportProfilesServiceRequest) -> Vec<&otlp::Profile> {
    request
        .resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .flat_map(|s| &s.profiles)
        .collect()
}

fn string(d: &otlp::ProfilesDictionary, index: i32) -> &str {
    &d.string_table[usize::try_from(index).expect("string index is not negative")]
}

/// Asserts `index` points into a table of `len` entries (0 is the null entry).
fn in_range(index: i32, len: usize, what: &str) {
    assert!(
        index >= 0 && (index as usize) < len,
        "{what} index {index} outside 0..{len}"
    );
}

/// Every reference in the request, checked against the dictionary.
fn assert_indices_in_range(request: &ExportProfilesServiceRequest) {
    let d = dictionary(request);
    let strings = d.string_table.len();
    let check_attributes = |indices: &[i32], what: &str| {
        let mut keys = HashSet::new();
        for &i in indices {
            in_range(i, d.attribute_table.len(), what);
            assert_ne!(i, 0, "{what} references the null attribute");
            // attribute_indices must keep keys unique.
            assert!(
                keys.insert(d.attribute_table[i as usize].key_strindex),
                "{what} repeats a key"
            );
        }
    };
    for a in &d.attribute_table {
        in_range(a.key_strindex, strings, "attribute key");
        in_range(a.unit_strindex, strings, "attribute unit");
    }
    for m in &d.mapping_table {
        in_range(m.filename_strindex, strings, "mapping filename");
        check_attributes(&m.attribute_indices, "mapping");
    }
    for f in &d.function_table {
        for i in [f.name_strindex, f.system_name_strindex, f.filename_strindex] {
            in_range(i, strings, "function string");
        }
    }
    for l in &d.location_table {
        in_range(l.mapping_index, d.mapping_table.len(), "location mapping");
        check_attributes(&l.attribute_indices, "location");
        for line in &l.lines {
            in_range(line.function_index, d.function_table.len(), "line function");
        }
    }
    for s in &d.stack_table {
        for &i in &s.location_indices {
            in_range(i, d.location_table.len(), "stack location");
            assert_ne!(i, 0, "a stack references the null location");
        }
    }
    for p in profiles(request) {
        for vt in p.sample_type.iter().chain(&p.period_type) {
            in_range(vt.type_strindex, strings, "value type");
            in_range(vt.unit_strindex, strings, "value unit");
        }
        check_attributes(&p.attribute_indices, "profile");
        for s in &p.samples {
            in_range(s.stack_index, d.stack_table.len(), "sample stack");
            in_range(s.link_index, d.link_table.len(), "sample link");
            check_attributes(&s.attribute_indices, "sample");
            assert_eq!(s.values.len(), 1, "one value per sample");
            assert!(s.values[0] > 0, "zero-valued samples are left out");
        }
    }
}

fn assert_entry_zero_is_the_zero_value(d: &otlp::ProfilesDictionary) {
    assert_eq!(d.mapping_table.first(), Some(&otlp::Mapping::default()));
    assert_eq!(d.location_table.first(), Some(&otlp::Location::default()));
    assert_eq!(d.function_table.first(), Some(&otlp::Function::default()));
    assert_eq!(d.link_table.first(), Some(&otlp::Link::default()));
    assert_eq!(d.string_table.first().map(String::as_str), Some(""));
    assert_eq!(
        d.attribute_table.first(),
        Some(&otlp::KeyValueAndUnit::default())
    );
    assert_eq!(d.stack_table.first(), Some(&otlp::Stack::default()));
}

fn assert_no_duplicates<T: std::fmt::Debug + PartialEq>(table: &[T], what: &str) {
    for (i, a) in table.iter().enumerate() {
        for b in &table[i + 1..] {
            assert_ne!(a, b, "{what} table has a duplicate");
        }
    }
}

fn frame_names(d: &otlp::ProfilesDictionary, stack_index: i32) -> Vec<Vec<&str>> {
    d.stack_table[stack_index as usize]
        .location_indices
        .iter()
        .map(|&l| {
            d.location_table[l as usize]
                .lines
                .iter()
                .map(|line| {
                    string(
                        d,
                        d.function_table[line.function_index as usize].name_strindex,
                    )
                })
                .collect()
        })
        .collect()
}

fn sample_attributes<'a>(
    d: &'a otlp::ProfilesDictionary,
    sample: &otlp::Sample,
) -> HashMap<&'a str, String> {
    sample
        .attribute_indices
        .iter()
        .map(|&i| {
            let a = &d.attribute_table[i as usize];
            let value = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(n)) => n.to_string(),
                other => panic!("unexpected attribute value {other:?}"),
            };
            (string(d, a.key_strindex), value)
        })
        .collect()
}

#[test]
fn dictionary_invariants_hold_for_kernel_native_inlined_and_jit_frames() {
    let request = to_otlp_request(&mixed_profile(), &resource());
    let d = dictionary(&request);
    assert_entry_zero_is_the_zero_value(d);
    assert_indices_in_range(&request);
    assert_no_duplicates(&d.string_table, "string");
    assert_no_duplicates(&d.function_table, "function");
    assert_no_duplicates(&d.mapping_table, "mapping");
    assert_no_duplicates(&d.location_table, "location");
    assert_no_duplicates(&d.stack_table, "stack");
    assert_no_duplicates(&d.attribute_table, "attribute");

    // Survives the wire: what a collector decodes is what we built.
    let decoded = ExportProfilesServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, request);
}

#[test]
fn an_empty_report_still_has_every_zero_entry() {
    let request = to_otlp_request(&empty_profile(), &resource());
    let d = dictionary(&request);
    assert_entry_zero_is_the_zero_value(d);
    assert_indices_in_range(&request);
    assert!(profiles(&request).iter().all(|p| p.samples.is_empty()));
}

#[test]
fn one_profile_per_sample_type_with_totals_period_and_time() {
    let profile = mixed_profile();
    let request = to_otlp_request(&profile, &resource());
    let d = dictionary(&request);
    let totals = profile.totals();
    let found = profiles(&request);
    assert_eq!(found.len(), 2);
    let types: Vec<(&str, &str)> = found
        .iter()
        .map(|p| {
            let t = p.sample_type.unwrap();
            (string(d, t.type_strindex), string(d, t.unit_strindex))
        })
        .collect();
    assert_eq!(types, [("samples", "count"), ("off_cpu", "nanoseconds")]);
    let sum = |p: &otlp::Profile| p.samples.iter().map(|s| s.values[0]).sum::<i64>();
    assert_eq!(sum(found[0]), totals.cpu_samples as i64);
    assert_eq!(sum(found[1]), totals.off_cpu_ns as i64);

    let cpu = found[0];
    let period_type = cpu.period_type.unwrap();
    assert_eq!(
        (
            string(d, period_type.type_strindex),
            string(d, period_type.unit_strindex)
        ),
        ("cpu", "nanoseconds")
    );
    assert_eq!(cpu.period, profile.sample_period_ns() as i64);
    for p in &found {
        assert_eq!(p.time_unix_nano, 1_700_000_000 * 1_000_000_000);
        assert_eq!(p.duration_nano, 10 * 1_000_000_000);
        assert_eq!(p.profile_id.len(), 16);
        assert!(p.profile_id.iter().any(|&b| b != 0));
    }
    assert_ne!(found[0].profile_id, found[1].profile_id);

    let mut without_off_cpu = profile.clone();
    without_off_cpu.off_cpu_enabled = false;
    assert_eq!(
        profiles(&to_otlp_request(&without_off_cpu, &resource())).len(),
        1
    );
}

#[test]
fn frames_lines_mappings_and_attributes_follow_the_conventions() {
    let request = to_otlp_request(&mixed_profile(), &resource());
    let d = dictionary(&request);
    let cpu = profiles(&request)[0];

    // The first row: an inline chain is one location, innermost first, then callers.
    let first = &cpu.samples[0];
    assert_eq!(
        frame_names(d, first.stack_index),
        vec![
            vec!["inlined_leaf", "inlined_middle", "compute"],
            vec!["work"],
            vec!["main"]
        ]
    );
    let attributes = sample_attributes(d, first);
    assert_eq!(attributes["process.pid"], "4242");
    assert_eq!(attributes["thread.id"], "4243");
    assert_eq!(attributes["thread.name"], "worker-1");
    assert_eq!(attributes["process.executable.name"], "myprog");
    assert_eq!(attributes["process.executable.path"], "/usr/bin/myprog");
    assert_eq!(attributes["container.id"], "c0ffee");

    // Mappings carry the GNU build ID as an attribute.
    let exe_location =
        &d.location_table[d.stack_table[first.stack_index as usize].location_indices[0] as usize];
    let exe = &d.mapping_table[exe_location.mapping_index as usize];
    assert_eq!(string(d, exe.filename_strindex), "/usr/bin/myprog");
    let build_id = &d.attribute_table[exe.attribute_indices[0] as usize];
    assert_eq!(
        string(d, build_id.key_strindex),
        "process.executable.build_id.gnu"
    );
    assert_eq!(
        build_id.value.as_ref().unwrap().value,
        Some(Value::StringValue("abcdef0123456789".into()))
    );
    assert!(exe.memory_start <= exe_location.address && exe_location.address < exe.memory_limit);

    // Kernel frames: one [kernel.kallsyms] mapping covering them, frame type kernel.
    let frame_type = |l: &otlp::Location| {
        l.attribute_indices.iter().find_map(|&i| {
            let a = &d.attribute_table[i as usize];
            (string(d, a.key_strindex) == "profile.frame.type")
                .then(|| a.value.clone().unwrap().value.unwrap())
        })
    };
    let kernel_locations: Vec<&otlp::Location> = d
        .location_table
        .iter()
        .filter(|l| frame_type(l) == Some(Value::StringValue("kernel".into())))
        .collect();
    assert_eq!(kernel_locations.len(), 4);
    for l in kernel_locations {
        let m = &d.mapping_table[l.mapping_index as usize];
        assert_eq!(string(d, m.filename_strindex), "[kernel.kallsyms]");
        assert!(m.memory_start <= l.address && l.address < m.memory_limit);
    }

    // A JIT frame without a mapping uses the null mapping and no frame type.
    let jit = d
        .location_table
        .iter()
        .find(|l| l.address == 0x7e00_0000_1000)
        .expect("the JIT frame has a location");
    assert_eq!(jit.mapping_index, 0);
    assert_eq!(frame_type(jit), None);

    let resource = request.resource_profiles[0].resource.as_ref().unwrap();
    let resource: HashMap<&str, &Option<Value>> = resource
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), &kv.value.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        resource["host.name"],
        &Some(Value::StringValue("testhost".into()))
    );
    assert_eq!(
        resource["host.arch"],
        &Some(Value::StringValue("amd64".into()))
    );
    assert_eq!(
        resource["service.name"],
        &Some(Value::StringValue("kestrel-test".into()))
    );
    assert_eq!(
        resource["os.type"],
        &Some(Value::StringValue("linux".into()))
    );
}

/// A real gRPC ProfilesService (the generated tonic server) recording what it gets.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<(MetadataMap, ExportProfilesServiceRequest)>>>,
    calls: Arc<AtomicUsize>,
    /// Answer UNAVAILABLE to this many calls first.
    fail_first: usize,
}

#[tonic::async_trait]
impl ProfilesService for Collector {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.fail_first {
            return Err(Status::unavailable("collector warming up"));
        }
        let metadata = request.metadata().clone();
        self.received
            .lock()
            .unwrap()
            .push((metadata, request.into_inner()));
        Ok(Response::new(ExportProfilesServiceResponse::default()))
    }
}

/// Serves `collector` on 127.0.0.1 from its own thread and runtime until the
/// returned sender is dropped.
fn serve(collector: Collector) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            addr_tx.send(incoming.local_addr().unwrap()).unwrap();
            Server::builder()
                .add_service(
                    ProfilesServiceServer::new(collector)
                        .accept_compressed(CompressionEncoding::Gzip),
                )
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

fn insecure_config(addr: SocketAddr) -> OtlpConfig {
    OtlpConfig {
        insecure: true,
        initial_backoff_ms: 10,
        max_backoff_ms: 50,
        timeout_ms: 2_000,
        ..OtlpConfig::new(format!("http://{addr}"))
    }
}

#[test]
fn exporter_delivers_gzipped_requests_with_headers_to_a_real_collector() {
    let collector = Collector::default();
    let (addr, _stop) = serve(collector.clone());
    let mut config = insecure_config(addr);
    config
        .headers
        .insert("X-Api-Key".to_string(), "k3y".to_string());
    let mut exporter = OtlpExporter::new(config).unwrap();

    let profile = mixed_profile();
    exporter.export(&profile).unwrap();
    exporter.export(&profile).unwrap();
    // An idle interval sends nothing.
    exporter.export(&empty_profile()).unwrap();
    exporter.shutdown(Duration::from_secs(20)).unwrap();

    let stats = exporter.stats();
    assert_eq!(
        (
            stats.exported,
            stats.failed,
            stats.dropped,
            stats.queued_bytes
        ),
        (2, 0, 0, 0)
    );
    let received = collector.received.lock().unwrap();
    assert_eq!(received.len(), 2);
    let (metadata, request) = &received[0];
    assert_eq!(metadata.get("x-api-key").unwrap(), "k3y");
    assert_eq!(metadata.get("grpc-encoding").unwrap(), "gzip");
    assert!(metadata
        .get("user-agent")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("kestrel/"));
    assert_indices_in_range(request);
    let cpu_total: i64 = profiles(request)[0]
        .samples
        .iter()
        .map(|s| s.values[0])
        .sum();
    assert_eq!(cpu_total, profile.totals().cpu_samples as i64);
    assert!(matches!(
        exporter.export(&profile),
        Err(ExportError::SenderGone(_))
    ));
}

#[test]
fn exporter_retries_unavailable_until_the_collector_accepts() {
    let collector = Collector {
        fail_first: 3,
        ..Collector::default()
    };
    let (addr, _stop) = serve(collector.clone());
    let mut exporter = OtlpExporter::new(insecure_config(addr)).unwrap();
    exporter.export(&mixed_profile()).unwrap();
    exporter.shutdown(Duration::from_secs(20)).unwrap();
    assert_eq!(collector.calls.load(Ordering::SeqCst), 4);
    assert_eq!(collector.received.lock().unwrap().len(), 1);
    assert_eq!(exporter.stats().exported, 1);
}

#[test]
fn exporter_gives_up_after_max_retries_and_counts_a_failure() {
    let collector = Collector {
        fail_first: usize::MAX,
        ..Collector::default()
    };
    let (addr, _stop) = serve(collector.clone());
    let mut config = insecure_config(addr);
    config.max_retries = 2;
    let mut exporter = OtlpExporter::new(config).unwrap();
    exporter.export(&mixed_profile()).unwrap();
    exporter.shutdown(Duration::from_secs(20)).unwrap();
    assert_eq!(collector.calls.load(Ordering::SeqCst), 3);
    let stats = exporter.stats();
    assert_eq!((stats.exported, stats.failed), (0, 1));
}

/// A port that refuses connections: bound, then closed.
fn refused_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn queue_is_bounded_in_bytes_dropping_the_oldest_and_shutdown_keeps_its_deadline() {
    let profile = mixed_profile();
    let report_bytes = to_otlp_request(&profile, &ResourceInfo::from_host(&profile.host, "kestrel"))
        .encoded_len() as u64;
    let mut config = insecure_config(refused_port());
    config.max_queue_bytes = report_bytes * 5 / 2;
    // Long backoff: the first report stays in flight, retrying, while more arrive.
    config.initial_backoff_ms = 60_000;
    config.max_backoff_ms = 60_000;
    let mut exporter = OtlpExporter::new(config).unwrap();

    // Once the sender holds the first report (retrying it), the queue is empty.
    exporter.export(&profile).unwrap();
    let mut polls = 0;
    while exporter.stats().queued_bytes > 0 {
        polls += 1;
        assert!(polls < 1_000, "the sender never picked up the first report");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..7 {
        exporter.export(&profile).unwrap();
        let stats = exporter.stats();
        assert!(stats.queued_bytes <= report_bytes * 5 / 2, "{stats:?}");
    }
    // Seven more against a bound of two and a half: two stay, the five oldest go.
    let stats = exporter.stats();
    assert_eq!(stats.dropped, 5, "{stats:?}");
    assert_eq!(stats.queued_bytes, report_bytes * 2, "{stats:?}");

    let err = exporter.shutdown(Duration::from_millis(300)).unwrap_err();
    let ExportError::ShutdownTimedOut { pending } = err else {
        panic!("expected a timed-out shutdown, got {err}");
    };
    assert_eq!(pending, 3, "one in flight and two queued");
    let stats = exporter.stats();
    assert_eq!(stats.queued_bytes, 0);
    assert_eq!(
        stats.dropped,
        5 + 3,
        "what shutdown gave up on counts as dropped"
    );
    assert_eq!(stats.exported + stats.failed, 0);
}

#[test]
fn report_larger_than_the_whole_queue_is_refused() {
    let mut config = insecure_config(refused_port());
    config.max_queue_bytes = 64;
    let mut exporter = OtlpExporter::new(config).unwrap();
    let err = exporter.export(&mixed_profile()).unwrap_err();
    assert!(err.to_string().contains("max_queue_bytes"), "{err}");
    assert_eq!(exporter.stats().dropped, 1);
    exporter.shutdown(Duration::from_secs(5)).unwrap();
}

/// Makes a throw-away CA and a `localhost` server certificate with the real openssl CLI.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("`openssl` must be installed for the TLS test");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=kestrel test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// Serves `collector` over TLS with the certificates in `dir`.
fn serve_tls(
    collector: Collector,
    dir: &std::path::Path,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(dir.join("server.pem")).unwrap(),
        std::fs::read(dir.join("server.key")).unwrap(),
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            addr_tx.send(incoming.local_addr().unwrap()).unwrap();
            Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(
                    ProfilesServiceServer::new(collector)
                        .accept_compressed(CompressionEncoding::Gzip),
                )
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

#[test]
fn tls_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let collector = Collector::default();
    let (addr, _stop) = serve_tls(collector.clone(), dir.path());
    let secure = |ca_file: Option<std::path::PathBuf>| OtlpConfig {
        ca_file,
        max_retries: 0,
        ..OtlpConfig::new(format!("localhost:{}", addr.port()))
    };

    // Without our CA the server's certificate is unknown: the handshake fails.
    let mut untrusting = OtlpExporter::new(secure(None)).unwrap();
    untrusting.export(&mixed_profile()).unwrap();
    untrusting.shutdown(Duration::from_secs(20)).unwrap();
    assert_eq!(
        (untrusting.stats().exported, untrusting.stats().failed),
        (0, 1)
    );
    assert!(collector.received.lock().unwrap().is_empty());

    let mut trusting = OtlpExporter::new(secure(Some(dir.path().join("ca.pem")))).unwrap();
    trusting.export(&mixed_profile()).unwrap();
    trusting.shutdown(Duration::from_secs(20)).unwrap();
    assert_eq!((trusting.stats().exported, trusting.stats().failed), (1, 0));
    assert_eq!(collector.received.lock().unwrap().len(), 1);
}
