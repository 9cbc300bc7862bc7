//! Encoder cost and output size for an agent-sized report, printed as a table.
//! `cargo bench -p kestrel-export --bench encode`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kestrel_export::{
    encode_pprof, encode_pprof_raw, flamegraph_svg, folded, to_otlp_request, FoldedValue,
    ResourceInfo,
};
use kestrel_model::{
    Frame, FrameKind, HostInfo, Mapping, ProcessInfo, Profile, SampleValues, StackSample,
};
use prost::Message;

/// `rows` stacks of `depth` frames over 50 processes, functions drawn from a pool
/// of 5,000 with a fixed pseudo-random walk (no RNG dependency, same every run).
fn synthetic_profile(rows: usize, depth: usize) -> Profile {
    let mapping = Arc::new(Mapping {
        start: 0x40_0000,
        end: 0x80_0000,
        file_offset: 0,
        path: Arc::from("/usr/bin/service"),
        build_id: Some(Arc::from("0123456789abcdef0123456789abcdef01234567")),
    });
    let processes: Vec<Arc<ProcessInfo>> = (0..50)
        .map(|pid| {
            Arc::new(ProcessInfo {
                pid: 1000 + pid,
                name: Arc::from(format!("service-{pid}").as_str()),
                executable_path: Some(Arc::from("/usr/bin/service")),
                build_id: None,
                container_id: Some(Arc::from(format!("{pid:064x}").as_str())),
            })
        })
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let samples = (0..rows)
        .map(|row| {
            let frames = (0..depth)
                .map(|level| {
                    let function = next() % 5_000;
                    let kind = if level < 3 {
                        FrameKind::Kernel
                    } else {
                        FrameKind::Native
                    };
                    let address = if kind == FrameKind::Kernel {
                        0xffff_ffff_8100_0000 + function * 16
                    } else {
                        0x40_0000 + function * 16
                    };
                    Frame {
                        function: Some(Arc::from(
                            format!("namespace::module::function_{function}").as_str(),
                        )),
                        file: Some(Arc::from("src/lib.rs")),
                        line: Some(function as u32 % 900 + 1),
                        ..Frame::unknown(
                            kind,
                            address,
                            (kind == FrameKind::Native).then(|| mapping.clone()),
                        )
                    }
                })
                .collect();
            StackSample {
                process: processes[row % processes.len()].clone(),
                tid: 5000 + (row % 400) as u32,
                thread_name: Arc::from("worker"),
                frames,
                values: SampleValues {
                    cpu_samples: next() % 50 + 1,
                    off_cpu_ns: next() % 10_000_000,
                    off_cpu_waits: next() % 20 + 1,
                },
            }
        })
        .collect();
    Profile {
        host: HostInfo {
            hostname: "bench".into(),
            arch: "x86_64".into(),
            kernel_release: "6.18.0".into(),
        },
        start: SystemTime::now(),
        duration: Duration::from_secs(60),
        frequency_hz: 19,
        off_cpu_enabled: true,
        samples,
    }
}

/// Median wall time of `runs` calls, and the size of what the last call produced.
fn measure(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut size = 0;
    for _ in 0..runs {
        let start = Instant::now();
        size = black_box(f());
        times.push(start.elapsed());
    }
    times.sort();
    (times[runs / 2], size)
}

fn main() {
    println!("| rows × depth | encoder | median time | output bytes |");
    println!("|---|---|---|---|");
    for (rows, depth) in [(1_000, 20), (10_000, 30)] {
        let profile = synthetic_profile(rows, depth);
        let resource = ResourceInfo::from_host(&profile.host, "kestrel");
        let stacks = folded(&profile, FoldedValue::CpuSamples);
        let rows_by_encoder: Vec<(&str, (Duration, usize))> = vec![
            ("pprof raw", measure(5, || encode_pprof_raw(&profile).len())),
            (
                "pprof gzip",
                measure(5, || encode_pprof(&profile).unwrap().len()),
            ),
            (
                "folded cpu",
                measure(5, || folded(&profile, FoldedValue::CpuSamples).len()),
            ),
            (
                "flamegraph svg",
                measure(3, || {
                    flamegraph_svg(&stacks, "bench", "samples").unwrap().len()
                }),
            ),
            (
                "otlp request",
                measure(5, || to_otlp_request(&profile, &resource).encoded_len()),
            ),
        ];
        for (name, (time, bytes)) in rows_by_encoder {
            println!(
                "| {rows} × {depth} | {name} | {:.1} ms | {bytes} |",
                time.as_secs_f64() * 1e3
            );
        }
    }
}
