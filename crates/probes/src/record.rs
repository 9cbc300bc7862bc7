//! Parsing of ring buffer records (layouts in `bpf/kestrel.h`).
//!
//! Pure functions over bytes: the drain loop calls them for every record, and the
//! fuzz targets call them on arbitrary input. A malformed record is an error, never
//! a panic.

use thiserror::Error;

/// `enum record_kind` of kestrel.h.
pub const RECORD_ON_CPU: u8 = 1;
pub const RECORD_OFF_CPU_BLOCK: u8 = 2;
pub const RECORD_OFF_CPU_WAKE: u8 = 3;

pub const FLAG_KERNEL_STACK_ERROR: u8 = 1 << 0;
pub const FLAG_USER_STACK_ERROR: u8 = 1 << 1;
pub const FLAG_KERNEL_THREAD: u8 = 1 << 2;

/// `sizeof(struct sample_header)`.
pub const HEADER_BYTES: usize = 48;
/// `sizeof(struct wake_record)`.
pub const WAKE_BYTES: usize = 32;

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

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
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
            Ok(Record::Wake {
                cpu: u32::from(u16_at(bytes, 2)),
                tid: u32_at(bytes, 4),
                pid: u32_at(bytes, 8),
                timestamp_ns: u64_at(bytes, 16),
                delta_ns: u64_at(bytes, 24),
            })
        }
        RECORD_ON_CPU | RECORD_OFF_CPU_BLOCK => {
            if bytes.len() < HEADER_BYTES {
                return Err(RecordError::Truncated {
                    len: bytes.len(),
                    need: HEADER_BYTES,
                });
            }
            let kernel_frames = usize::from(bytes[12]);
            let user_frames = usize::from(bytes[13]);
            let announced = kernel_frames + user_frames;
            let carried = (bytes.len() - HEADER_BYTES) / 8;
            if carried < announced {
                return Err(RecordError::FrameCount { announced, carried });
            }
            let frame = |i: usize| u64_at(bytes, HEADER_BYTES + i * 8);
            let comm_bytes = &bytes[32..48];
            let comm_len = comm_bytes
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(comm_bytes.len());
            let block = kind == RECORD_OFF_CPU_BLOCK;
            Ok(Record::Stack {
                block,
                sample: RawSample {
                    kind: if block {
                        SampleKind::OffCpu
                    } else {
                        SampleKind::OnCpu
                    },
                    flags: bytes[1],
                    cpu: u32::from(u16_at(bytes, 2)),
                    tid: u32_at(bytes, 4),
                    pid: u32_at(bytes, 8),
                    timestamp_ns: u64_at(bytes, 16),
                    value: u64_at(bytes, 24),
                    comm: String::from_utf8_lossy(&comm_bytes[..comm_len]).into_owned(),
                    exec_seq: u16_at(bytes, 14),
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
