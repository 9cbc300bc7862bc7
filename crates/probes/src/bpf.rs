//! The compiled BPF objects, built by `build.rs` into OUT_DIR.

/// `bpf/kestrel.bpf.c`: the sampling programs.
pub static KESTREL_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kestrel.bpf.o"));

/// `bpf/feature_probe.bpf.c`: one tiny program per capability `kestrel check` tests.
pub static FEATURE_PROBE_OBJECT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/feature_probe.bpf.o"));

/// The generated skeleton; Kestrel drives the object through `libbpf_rs::Object`
/// (owned, no self-borrow), and uses the skeleton's generated types to check at
/// test time that Rust and C agree on record layouts.
#[allow(
    dead_code,
    clippy::all,
    non_camel_case_types,
    non_upper_case_globals,
    unused_qualifications,
    unused_imports
)]
pub(crate) mod skel {
    include!(concat!(env!("OUT_DIR"), "/kestrel.skel.rs"));
}
