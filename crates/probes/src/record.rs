//! Parsing of ring buffer records (layouts in `bpf/kestrel.h`).
//!
//! Pure functions over bytes: the drain loop calls them for every record, and the
//! fuzz targets call them on arbitrary input. A malformed record is an error, never
//! a panic.
//!
//! Every field is read at the offset and with the width of the type libbpf-cargo
//! generates from kestrel.h (`offset_of!` and the field's own type), and every
//! kind, flag and size below is taken from those types: no layout is written
//! here by hand.

use std::mem::{offset_of, size_of};
use std::ops::Range;

use thiserror::Error;

use crate::bpf::skel::types::{
    kestrel_record_flags as Flags, kestrel_record_kind as Kind, kestrel_sample,
    kestrel_sample_header as Header, kestrel_wake as Wake,
};

/// A kestrel.h enum value narrowed to the `__u8` field that carries it; a value
/// that does not fit stops the build (the constants below are evaluated at
/// compile time).
const fn byte(value: u32) -> u8 {
    assert!(
        value <= u8::MAX as u32,
        "a kestrel.h kind or flag does not fit its __u8 field"
    );
    value as u8
}

/// `enum kestrel_record_kind` of kestrel.h.
pub const RECORD_ON_CPU: u8 = byte(Kind::RECORD_ON_CPU.0);
pub const RECORD_OFF_CPU_BLOCK: u8 = byte(Kind::RECORD_OFF_CPU_BLOCK.0);
pub const RECORD_OFF_CPU_WAKE: u8 = byte(Kind::RECORD_OFF_CPU_WAKE.0);

/// `enum kestrel_record_flags` of kestrel.h.
pub const FLAG_KERNEL_STACK_ERROR: u8 = byte(Flags::FLAG_KERNEL_STACK_ERROR.0);
pub const FLAG_USER_STACK_ERROR: u8 = byte(Flags::FLAG_USER_STACK_ERROR.0);
pub const FLAG_KERNEL_THREAD: u8 = byte(Flags::FLAG_KERNEL_THREAD.0);

/// `sizeof(struct kestrel_sample_header)`.
pub const HEADER_BYTES: usize = size_of::<Header>();
/// `sizeof(struct kestrel_wake)`.
pub const WAKE_BYTES: usize = size_of::<Wake>();
/// Where the frames start in a sample record: header and frames are sent
/// packed, as laid out in `struct kestrel_sample`.
const FRAMES_OFFSET: usize = offset_of!(kestrel_sample, frames);
/// One frame: an instruction pointer.
const FRAME_BYTES: usize = size_of::<u64>();

/// A record field that is a little-endian integer.
trait LeField: Sized {
    /// `bytes` is exactly `size_of::<Self>()` long.
    fn decode(bytes: &[u8]) -> Self;
}

macro_rules! le_field {
    ($($t:ty),*) => {$(
        impl LeField for $t {
            fn decode(bytes: &[u8]) -> Self {
                let mut a = [0u8; size_of::<$t>()];
                // Lengths agree: every caller slices exactly size_of::<$t>() bytes.
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
le_field!(u8, u16, u32, u64);

/// The byte range of the field `_field` selects in a `S`: its offset as given,
/// its width the field's own type.
fn span<S, T>(offset: usize, _field: fn(&S) -> &T) -> Range<usize> {
    offset..offset + size_of::<T>()
}

/// The byte range of field `$field` of generated struct `$ty`.
macro_rules! span {
    ($ty:ty, $field:ident) => {
        span(offset_of!($ty, $field), |s: &$ty| &s.$field)
    };
}

/// Field `$field` of generated struct `$ty`, read from `$bytes`, which the
/// caller has checked holds at least a whole `$ty`. The value has the field's
/// generated type, so a width changed in kestrel.h changes (or breaks) the code
/// here instead of being misread.
macro_rules! read {
    ($bytes:expr, $ty:ty, $field:ident) => {
        read_field($bytes, offset_of!($ty, $field), |s: &$ty| &s.$field)
    };
}

fn read_field<S, T: LeField>(bytes: &[u8], offset: usize, field: fn(&S) -> &T) -> T {
    T::decode(&bytes[span(offset, field)])
}

// `parse_record` tells the kinds apart by the first byte of every record.
const _: () = assert!(offset_of!(Header, kind) == 0 && offset_of!(Wake, kind) == 0);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error(
        "ring buffer record of {len} bytes is shorter than the {need}-byte header of its kind"
    )]
    Truncated { len: usize, need: usize },
    #[error("ring buffer record has unknown kind {0}; the BPF object and this binary disagree")]
    UnknownKind(u8),
    #[error("ring buffer record announces {announced} frames but carries {carried}")]
    FrameCount { announced: usize, carried: usize },
}

/// What a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleKind {
    /// One on-CPU sample; `value` is 1 (one sampling period).
    OnCpu,
    /// A completed off-CPU wait; `value` is its duration in nanoseconds.
    OffCpu,
}

/// A sample with its raw stacks, as the probes hand it to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    pub kind: SampleKind,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub timestamp_ns: u64,
    pub value: u64,
    /// The thread's name (`comm`) at sampling time.
    pub comm: String,
    /// Which execve of the process took the sample (low 16 bits of the task's
    /// `self_exec_id`): `(pid, exec_seq)` names the process image.
    pub exec_seq: u16,
    pub flags: u8,
    /// Leaf first.
    pub kernel_stack: Vec<u64>,
    /// Leaf first.
    pub user_stack: Vec<u64>,
}

/// A decoded ring buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// On-CPU sample, or the blocking stack of an off-CPU wait (`kind` tells).
    Stack { block: bool, sample: RawSample },
    /// The end of an off-CPU wait that began `delta_ns` before `timestamp_ns`.
    Wake {
        pid: u32,
        tid: u32,
        cpu: u32,
        timestamp_ns: u64,
        delta_ns: u64,
    },
}

/// Decode one record. The caller guarantees nothing about `bytes`.
pub fn parse_record(bytes: &[u8]) -> Result<Record, RecordError> {
    let Some(&kind) = bytes.first() else {
        return Err(RecordError::Truncated {
            len: 0,
            need: WAKE_BYTES,
        });
    };
    match kind {
        RECORD_OFF_CPU_WAKE => {
            if bytes.len() < WAKE_BYTES {
                return Err(RecordError::Truncated {
                    len: bytes.len(),
                    need: WAKE_BYTES,
                });
            }
            let cpu: u16 = read!(bytes, Wake, cpu);
            Ok(Record::Wake {
                cpu: u32::from(cpu),
                tid: read!(bytes, Wake, tid),
                pid: read!(bytes, Wake, pid),
                timestamp_ns: read!(bytes, Wake, timestamp_ns),
                delta_ns: read!(bytes, Wake, delta_ns),
            })
        }
        RECORD_ON_CPU | RECORD_OFF_CPU_BLOCK => {
            if bytes.len() < HEADER_BYTES {
                return Err(RecordError::Truncated {
                    len: bytes.len(),
                    need: HEADER_BYTES,
                });
            }
            let kernel_frames: u8 = read!(bytes, Header, kernel_frames);
            let user_frames: u8 = read!(bytes, Header, user_frames);
            let kernel_frames = usize::from(kernel_frames);
            let announced = kernel_frames + usize::from(user_frames);
            let carried = bytes.len().saturating_sub(FRAMES_OFFSET) / FRAME_BYTES;
            if carried < announced {
                return Err(RecordError::FrameCount { announced, carried });
            }
            let frame = |i: usize| {
                let at = FRAMES_OFFSET + i * FRAME_BYTES;
                u64::decode(&bytes[at..at + FRAME_BYTES])
            };
            let comm_bytes = &bytes[span!(Header, comm)];
            let comm_len = comm_bytes
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(comm_bytes.len());
            let block = kind == RECORD_OFF_CPU_BLOCK;
            let cpu: u16 = read!(bytes, Header, cpu);
            Ok(Record::Stack {
                block,
                sample: RawSample {
                    kind: if block {
                        SampleKind::OffCpu
                    } else {
                        SampleKind::OnCpu
                    },
                    flags: read!(bytes, Header, flags),
                    cpu: u32::from(cpu),
                    tid: read!(bytes, Header, tid),
                    pid: read!(bytes, Header, pid),
                    timestamp_ns: read!(bytes, Header, timestamp_ns),
                    value: read!(bytes, Header, value),
                    comm: String::from_utf8_lossy(&comm_bytes[..comm_len]).into_owned(),
                    exec_seq: read!(bytes, Header, exec_seq),
                    kernel_stack: (0..kernel_frames).map(frame).collect(),
                    user_stack: (kernel_frames..announced).map(frame).collect(),
                },
            })
        }
        other => Err(RecordError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, kframes: u8, uframes: u8) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES];
        b[0] = kind;
        b[2..4].copy_from_slice(&3u16.to_le_bytes());
        b[4..8].copy_from_slice(&101u32.to_le_bytes());
        b[8..12].copy_from_slice(&100u32.to_le_bytes());
        b[12] = kframes;
        b[13] = uframes;
        b[14..16].copy_from_slice(&0x1234u16.to_le_bytes());
        b[16..24].copy_from_slice(&5000u64.to_le_bytes());
        b[24..32].copy_from_slice(&1u64.to_le_bytes());
        b[32..36].copy_from_slice(b"work");
        b
    }

    #[test]
    fn parses_on_cpu_sample_with_both_stacks() {
        let mut b = header(RECORD_ON_CPU, 2, 1);
        for f in [0xffff_0001u64, 0xffff_0002, 0x4000] {
            b.extend_from_slice(&f.to_le_bytes());
        }
        let Record::Stack { block, sample } = parse_record(&b).unwrap() else {
            panic!("wrong kind")
        };
        assert!(!block);
        assert_eq!(sample.kind, SampleKind::OnCpu);
        assert_eq!((sample.pid, sample.tid, sample.cpu), (100, 101, 3));
        assert_eq!(sample.comm, "work");
        assert_eq!(sample.exec_seq, 0x1234);
        assert_eq!(sample.kernel_stack, vec![0xffff_0001, 0xffff_0002]);
        assert_eq!(sample.user_stack, vec![0x4000]);
        assert_eq!(sample.timestamp_ns, 5000);
    }

    #[test]
    fn parses_wake() {
        let mut b = vec![0u8; WAKE_BYTES];
        b[0] = RECORD_OFF_CPU_WAKE;
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        b[24..32].copy_from_slice(&123u64.to_le_bytes());
        assert_eq!(
            parse_record(&b).unwrap(),
            Record::Wake {
                pid: 0,
                tid: 7,
                cpu: 0,
                timestamp_ns: 0,
                delta_ns: 123
            }
        );
    }

    /// Every field of both record types, each with a distinct value, written
    /// through the generated types and read back by the parser.
    #[test]
    fn reads_every_field_where_the_generated_types_put_it() {
        use crate::abi::bytes_of;
        let mut comm = Header::default().comm;
        for (dst, src) in comm.iter_mut().zip(b"worker-7") {
            *dst = *src as _;
        }
        let header = Header {
            kind: RECORD_OFF_CPU_BLOCK,
            flags: FLAG_USER_STACK_ERROR | FLAG_KERNEL_THREAD,
            cpu: 0x0102,
            tid: 0x0304_0506,
            pid: 0x0708_090a,
            kernel_frames: 1,
            user_frames: 2,
            exec_seq: 0xbeef,
            timestamp_ns: 0x1122_3344_5566_7788,
            value: 0x99aa_bbcc_ddee_ff00,
            comm,
        };
        let mut b = bytes_of(&header).to_vec();
        for f in [0xffff_0001u64, 0x4000, 0x4001] {
            b.extend_from_slice(&f.to_le_bytes());
        }
        assert_eq!(
            parse_record(&b).unwrap(),
            Record::Stack {
                block: true,
                sample: RawSample {
                    kind: SampleKind::OffCpu,
                    pid: 0x0708_090a,
                    tid: 0x0304_0506,
                    cpu: 0x0102,
                    timestamp_ns: 0x1122_3344_5566_7788,
                    value: 0x99aa_bbcc_ddee_ff00,
                    comm: "worker-7".into(),
                    exec_seq: 0xbeef,
                    flags: FLAG_USER_STACK_ERROR | FLAG_KERNEL_THREAD,
                    kernel_stack: vec![0xffff_0001],
                    user_stack: vec![0x4000, 0x4001],
                },
            }
        );

        let wake = Wake {
            kind: RECORD_OFF_CPU_WAKE,
            flags: 0x7f,
            cpu: 0x0203,
            tid: 0x0405_0607,
            pid: 0x0809_0a0b,
            reserved: 0x0c0d_0e0f,
            timestamp_ns: 0x1011_1213_1415_1617,
            delta_ns: 0x1819_1a1b_1c1d_1e1f,
        };
        assert_eq!(
            parse_record(bytes_of(&wake)).unwrap(),
            Record::Wake {
                pid: 0x0809_0a0b,
                tid: 0x0405_0607,
                cpu: 0x0203,
                timestamp_ns: 0x1011_1213_1415_1617,
                delta_ns: 0x1819_1a1b_1c1d_1e1f,
            }
        );
    }

    #[test]
    fn rejects_malformed_records() {
        assert!(matches!(
            parse_record(&[]),
            Err(RecordError::Truncated { .. })
        ));
        assert_eq!(parse_record(&[9; 64]), Err(RecordError::UnknownKind(9)));
        let b = header(RECORD_ON_CPU, 5, 0);
        assert_eq!(
            parse_record(&b),
            Err(RecordError::FrameCount {
                announced: 5,
                carried: 0
            })
        );
        assert!(matches!(
            parse_record(&[RECORD_OFF_CPU_WAKE; 8]),
            Err(RecordError::Truncated { .. })
        ));
    }
}
