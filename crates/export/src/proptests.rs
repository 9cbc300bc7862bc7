//! Every encoder keeps every total, for arbitrary profiles.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kestrel_model::{
    Frame, FrameKind, HostInfo, Mapping, ProcessInfo, Profile, SampleValues, StackSample,
};
use proptest::prelude::*;

use crate::{decode_pprof, encode_pprof, folded, to_otlp_request, FoldedValue, ResourceInfo};

/// A frame from a small pool so that stacks share functions, addresses and mappings.
fn frame_strategy() -> impl Strategy<Value = Frame> {
    (
        0u8..3,
        0u64..6,
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(kind, slot, inlined, with_mapping, named)| {
            let kind = [FrameKind::Kernel, FrameKind::Native, FrameKind::Jit][kind as usize];
            let base = match kind {
                FrameKind::Kernel => 0xffff_ffff_8100_0000,
                FrameKind::Native => 0x40_0000,
                FrameKind::Jit => 0x7e00_0000_0000,
            };
            let mapping = (with_mapping && kind == FrameKind::Native).then(|| {
                Arc::new(Mapping {
                    start: 0x40_0000,
                    end: 0x50_0000,
                    file_offset: 0,
                    path: Arc::from("/bin/prop"),
                    build_id: Some(Arc::from("feed")),
                })
            });
            Frame {
                function: named.then(|| Arc::from(format!("fn_{slot};{kind:?}\n").as_str())),
                inlined: inlined && kind == FrameKind::Native,
                ..Frame::unknown(kind, base + slot * 0x10, mapping)
            }
        })
}

fn row_strategy() -> impl Strategy<Value = StackSample> {
    (
        0u32..3,
        prop::collection::vec(frame_strategy(), 0..8),
        0u64..1_000,
        prop::option::of(1u64..10_000_000),
        0u64..5,
    )
        .prop_map(
            |(pid, frames, cpu_samples, off_cpu_ns, waits)| StackSample {
                process: Arc::new(ProcessInfo {
                    pid: 100 + pid,
                    name: Arc::from(format!("proc{pid}").as_str()),
                    ..ProcessInfo::default()
                }),
                tid: 200 + pid,
                thread_name: Arc::from("t"),
                frames,
                values: SampleValues {
                    cpu_samples,
                    off_cpu_ns: off_cpu_ns.unwrap_or(0),
                    off_cpu_waits: off_cpu_ns.map_or(0, |_| waits + 1),
                },
            },
        )
}

fn profile_strategy() -> impl Strategy<Value = Profile> {
    (prop::collection::vec(row_strategy(), 0..20), 1u32..1_000).prop_map(
        |(samples, frequency_hz)| Profile {
            host: HostInfo::default(),
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
            duration: Duration::from_secs(1),
            frequency_hz,
            off_cpu_enabled: true,
            samples,
        },
    )
}

fn folded_sum(text: &str) -> u64 {
    text.lines()
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

proptest! {
    #[test]
    fn totals_survive_every_encoder(profile in profile_strategy()) {
        let totals = profile.totals();
        let period = profile.sample_period_ns();

        let pprof = decode_pprof(&encode_pprof(&profile).unwrap()).unwrap();
        prop_assert_eq!(pprof.total("samples"), Some(totals.cpu_samples as i64));
        prop_assert_eq!(pprof.total("cpu"), Some((totals.cpu_samples * period) as i64));
        prop_assert_eq!(pprof.total("off_cpu"), Some(totals.off_cpu_ns as i64));
        prop_assert_eq!(pprof.total("off_cpu_waits"), Some(totals.off_cpu_waits as i64));
        for location in &pprof.location {
            prop_assert!(location.mapping_id as usize <= pprof.mapping.len());
        }

        prop_assert_eq!(folded_sum(&folded(&profile, FoldedValue::CpuSamples)), totals.cpu_samples);
        prop_assert_eq!(folded_sum(&folded(&profile, FoldedValue::OffCpuNanoseconds)), totals.off_cpu_ns);
        let lines = folded(&profile, FoldedValue::CpuSamples);
        for line in lines.lines() {
            let (stack, _count) = line.rsplit_once(' ').unwrap();
            for segment in stack.split(';') {
                prop_assert!(!segment.is_empty() && !segment.ends_with(' '), "{:?}", line);
            }
        }

        let request = to_otlp_request(&profile, &ResourceInfo::default());
        let dictionary = request.dictionary.as_ref().unwrap();
        let profiles = &request.resource_profiles[0].scope_profiles[0].profiles;
        let sum = |i: usize| profiles[i].samples.iter().map(|s| s.values[0]).sum::<i64>();
        prop_assert_eq!(sum(0), totals.cpu_samples as i64);
        prop_assert_eq!(sum(1), totals.off_cpu_ns as i64);
        for sample in profiles.iter().flat_map(|p| &p.samples) {
            prop_assert!((sample.stack_index as usize) < dictionary.stack_table.len());
            for &location in &dictionary.stack_table[sample.stack_index as usize].location_indices {
                let location = &dictionary.location_table[location as usize];
                prop_assert!((location.mapping_index as usize) < dictionary.mapping_table.len());
                for line in &location.lines {
                    prop_assert!((line.function_index as usize) < dictionary.function_table.len());
                }
            }
        }
    }
}
