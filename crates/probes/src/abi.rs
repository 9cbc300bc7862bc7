//! The C/Rust boundary: the types libbpf-cargo generates from `bpf/kestrel.h`
//! (through the object's BTF) and the one way user space turns them into bytes.
//!
//! [`crate::record`] parses records at those types' offsets, `Session` writes
//! `.rodata` as the generated `.rodata` struct and reads counters by the
//! generated `enum kestrel_counter`; the tests below pin every field's offset and
//! size, and the sizes `kestrel-sizing` plans with, to the generated types.

use crate::bpf::skel::types;

/// A generated type whose every byte belongs to a field: `#[repr(C)]` integers
/// and arrays of integers, no padding between or after the fields.
///
/// # Safety
/// Implement only for such types; `layouts_match_kestrel_h` checks each one's
/// fields add up to its size.
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: integer fields only, no padding (checked by layouts_match_kestrel_h).
unsafe impl Plain for types::kestrel_config {}
// SAFETY: the .rodata datasec holds exactly one kestrel_config (same test).
unsafe impl Plain for types::rodata {}
// SAFETY: integer and char-array fields only, no padding (same test).
unsafe impl Plain for types::kestrel_sample_header {}
// SAFETY: integer fields only, no padding (same test).
unsafe impl Plain for types::kestrel_wake {}

/// `value`'s bytes as the BPF side lays them out (native byte order).
pub(crate) fn bytes_of<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so all size_of::<T>() bytes behind the
    // reference are initialised; u8 has no alignment requirement; the slice
    // borrows `value` and cannot outlive it.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of, size_of_val};

    use super::types::*;
    use super::*;

    /// (field, offset, size) of every field of a generated struct, read off a
    /// value so the sizes are the generated fields' own.
    macro_rules! fields {
        ($ty:ident { $($field:ident),* $(,)? }) => {{
            let v = $ty::default();
            // An exhaustive pattern: a field added in C and missing here fails
            // to compile, so the tables below cannot silently skip one.
            let $ty { $($field: _),* } = v;
            vec![$((stringify!($field), offset_of!($ty, $field), size_of_val(&v.$field))),*]
        }};
    }

    fn assert_layout(
        name: &str,
        actual: Vec<(&str, usize, usize)>,
        expected: &[(&str, usize, usize)],
        size: usize,
    ) {
        assert_eq!(actual, expected, "{name}: field (name, offset, size)");
        let covered: usize = actual.iter().map(|f| f.2).sum();
        assert_eq!(covered, size, "{name} has padding: bytes_of would read it");
        for pair in actual.windows(2) {
            assert_eq!(
                pair[0].1 + pair[0].2,
                pair[1].1,
                "{name}: gap after {}",
                pair[0].0
            );
        }
    }

    /// The layouts kestrel.h documents, which the fuzz corpus, the record tests
    /// and kestrel-sizing's constants were written against.
    #[test]
    fn layouts_match_kestrel_h() {
        assert_layout(
            "kestrel_sample_header",
            fields!(kestrel_sample_header {
                kind,
                flags,
                cpu,
                tid,
                pid,
                kernel_frames,
                user_frames,
                exec_seq,
                timestamp_ns,
                value,
                comm
            }),
            &[
                ("kind", 0, 1),
                ("flags", 1, 1),
                ("cpu", 2, 2),
                ("tid", 4, 4),
                ("pid", 8, 4),
                ("kernel_frames", 12, 1),
                ("user_frames", 13, 1),
                ("exec_seq", 14, 2),
                ("timestamp_ns", 16, 8),
                ("value", 24, 8),
                ("comm", 32, 16),
            ],
            size_of::<kestrel_sample_header>(),
        );
        assert_layout(
            "kestrel_wake",
            fields!(kestrel_wake {
                kind,
                flags,
                cpu,
                tid,
                pid,
                reserved,
                timestamp_ns,
                delta_ns
            }),
            &[
                ("kind", 0, 1),
                ("flags", 1, 1),
                ("cpu", 2, 2),
                ("tid", 4, 4),
                ("pid", 8, 4),
                ("reserved", 12, 4),
                ("timestamp_ns", 16, 8),
                ("delta_ns", 24, 8),
            ],
            size_of::<kestrel_wake>(),
        );
        assert_layout(
            "kestrel_config",
            fields!(kestrel_config {
                self_tgid,
                profile_self,
                filter_pids,
                stack_depth,
                off_cpu_enabled,
                off_cpu_threshold,
                off_cpu_min_ns,
                off_cpu_task_storage,
                reserved
            }),
            &[
                ("self_tgid", 0, 4),
                ("profile_self", 4, 4),
                ("filter_pids", 8, 4),
                ("stack_depth", 12, 4),
                ("off_cpu_enabled", 16, 4),
                ("off_cpu_threshold", 20, 4),
                ("off_cpu_min_ns", 24, 8),
                ("off_cpu_task_storage", 32, 4),
                ("reserved", 36, 28),
            ],
            size_of::<kestrel_config>(),
        );
        assert_layout(
            "kestrel_sample",
            fields!(kestrel_sample { header, frames }),
            &[("header", 0, 48), ("frames", 48, 2 * 127 * 8)],
            size_of::<kestrel_sample>(),
        );
        assert_layout(
            "kestrel_in_flight",
            fields!(kestrel_in_flight { start_ns, reserved }),
            &[("start_ns", 0, 8), ("reserved", 8, 8)],
            size_of::<kestrel_in_flight>(),
        );
        // .rodata is the configuration and nothing else.
        assert_eq!(offset_of!(rodata, CONFIG), 0);
        assert_eq!(size_of::<rodata>(), size_of::<kestrel_config>());
    }

    /// kestrel-sizing cannot see the BPF object: its constants are checked here.
    #[test]
    fn sizing_constants_match_the_generated_types() {
        let as_u32 = |n: usize| u32::try_from(n).unwrap();
        assert_eq!(
            as_u32(size_of::<kestrel_sample_header>()),
            kestrel_sizing::RECORD_HEADER_BYTES
        );
        assert_eq!(
            as_u32(size_of::<kestrel_wake>()),
            kestrel_sizing::WAKE_RECORD_BYTES
        );
        assert_eq!(
            as_u32(size_of::<kestrel_sample>()),
            kestrel_sizing::RECORD_MAX_BYTES
        );
        // The .rodata map's value is the whole section.
        assert_eq!(as_u32(size_of::<rodata>()), kestrel_sizing::RODATA_BYTES);
        assert_eq!(
            as_u32(size_of::<kestrel_in_flight>()),
            kestrel_sizing::OFFCPU_VALUE_BYTES
        );
        assert_eq!(
            kestrel_counter::KESTREL_NUM_COUNTERS.0,
            kestrel_sizing::NUM_COUNTERS
        );
        // The frame buffer holds a kernel and a user stack of the deepest depth.
        let sample = kestrel_sample::default();
        assert_eq!(
            as_u32(sample.frames.len()),
            2 * kestrel_sizing::MAX_STACK_DEPTH
        );
        assert_eq!(size_of_val(&sample.frames[0]), 8);
        // And sizing's record sizes are what the parser reads.
        assert_eq!(
            as_u32(crate::record::HEADER_BYTES),
            kestrel_sizing::RECORD_HEADER_BYTES
        );
        assert_eq!(
            as_u32(crate::record::WAKE_BYTES),
            kestrel_sizing::WAKE_RECORD_BYTES
        );
    }

    #[test]
    fn bytes_of_is_the_c_layout() {
        let config = kestrel_config {
            self_tgid: 0x0403_0201,
            off_cpu_min_ns: 0x0c0b_0a09_0807_0605,
            reserved: [0xffff_ffff; 7],
            ..kestrel_config::default()
        };
        let b = bytes_of(&config);
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..4], &0x0403_0201u32.to_ne_bytes());
        assert_eq!(&b[24..32], &0x0c0b_0a09_0807_0605u64.to_ne_bytes());
        assert_eq!(&b[36..64], &[0xff; 28]);
        assert_eq!(bytes_of(&rodata { CONFIG: config }), b);
    }
}
