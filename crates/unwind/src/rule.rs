//! What one table row says: how to find the caller's frame (x86_64 only).

/// Which register the canonical frame address (CFA) is an offset from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CfaBase {
    Rsp,
    Rbp,
}

/// Where the caller's rbp is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RbpRule {
    /// The function has not touched rbp (DWARF "same value", or no rule at all:
    /// rbp is callee-saved, so an unmentioned rbp still holds the caller's).
    Unchanged,
    /// Saved on the stack at `CFA + n`.
    AtCfa(i16),
    /// DWARF "undefined", or a rule the BPF side cannot follow (another register,
    /// an expression, an offset outside i16): the caller's rbp is not known, so
    /// a caller frame whose CFA is rbp-based cannot be unwound.
    Unknown,
}

/// Why a row is marked as one the BPF side cannot follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unsupported {
    /// The CFA is a DWARF expression other than the PLT one (e.g. `main` of a
    /// program realigning its stack: CFA = *(rbp - 8)).
    CfaExpression,
    /// The CFA is an offset from a register other than rsp and rbp (e.g. r10 in
    /// a stack-realigning prologue).
    CfaRegister,
    /// The return address is not at CFA - 8 (never the case in code from gcc or
    /// clang on x86_64, checked anyway).
    ReturnAddress,
    /// An offset does not fit the table's field (CFA offset outside i32).
    OffsetRange,
}

/// How to unwind one frame at a code address; the decoded form of a [`RawRule`].
///
/// For every kind but `EndOfStack` and the unsupported ones the return address is
/// at `CFA - 8` and the caller's rsp is the CFA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnwindRule {
    /// `CFA = base + offset`.
    Cfa {
        base: CfaBase,
        offset: i32,
        rbp: RbpRule,
    },
    /// A PLT stub (the linker's `.plt` expression): `CFA = rsp + base_offset`,
    /// plus 8 when `(rip & 15) >= threshold` (the stub has pushed the relocation
    /// index by then). Classic value: base 8, threshold 11. rbp is unchanged.
    Plt { base_offset: i32, threshold: u8 },
    /// A signal trampoline (CIE augmentation `S`, e.g. glibc's `__restore_rt`):
    /// the interrupted registers are in the `ucontext` at rsp; see
    /// [`crate::unwinder`] for the offsets. The caller's pc is exact (not a
    /// return address), so its lookup is not at pc - 1.
    SignalFrame,
    /// The return address is undefined: this is the outermost frame (`_start`,
    /// `clone`'s child); unwinding ends here successfully.
    EndOfStack,
    /// A rule the BPF side cannot follow; it falls back (frame pointers, or ends
    /// the stack with a truncation mark).
    Unsupported(Unsupported),
}

/// The BPF layout of one rule: 8 bytes, `#[repr(C)]`, no padding.
///
/// | `kind` | meaning | `cfa_offset` | `rbp_offset` |
/// |---|---|---|---|
/// | 0 `KIND_CFA_RSP` | CFA = rsp + cfa_offset | n | by `rbp_kind` |
/// | 1 `KIND_CFA_RBP` | CFA = rbp + cfa_offset | n | by `rbp_kind` |
/// | 2 `KIND_PLT` | CFA = rsp + cfa_offset + ((rip & 15) >= rbp_offset ? 8 : 0) | base | threshold |
/// | 3 `KIND_SIGNAL` | signal trampoline | 0 | 0 |
/// | 4 `KIND_END` | outermost frame | 0 | 0 |
/// | 5..=8 | unsupported: expression, register, return address, offset range | 0 | 0 |
///
/// `rbp_kind`: 0 unchanged, 1 at CFA + rbp_offset, 2 unknown (0 for kinds 2..).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RawRule {
    pub cfa_offset: i32,
    pub rbp_offset: i16,
    pub kind: u8,
    pub rbp_kind: u8,
}

pub const KIND_CFA_RSP: u8 = 0;
pub const KIND_CFA_RBP: u8 = 1;
pub const KIND_PLT: u8 = 2;
pub const KIND_SIGNAL: u8 = 3;
pub const KIND_END: u8 = 4;
pub const KIND_UNSUPPORTED_EXPRESSION: u8 = 5;
pub const KIND_UNSUPPORTED_REGISTER: u8 = 6;
pub const KIND_UNSUPPORTED_RETURN_ADDRESS: u8 = 7;
pub const KIND_UNSUPPORTED_OFFSET_RANGE: u8 = 8;

pub const RBP_UNCHANGED: u8 = 0;
pub const RBP_AT_CFA: u8 = 1;
pub const RBP_UNKNOWN: u8 = 2;

impl RawRule {
    pub const SIZE: usize = 8;

    pub fn to_le_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.cfa_offset.to_le_bytes());
        b[4..6].copy_from_slice(&self.rbp_offset.to_le_bytes());
        b[6] = self.kind;
        b[7] = self.rbp_kind;
        b
    }

    pub fn from_le_bytes(b: [u8; 8]) -> RawRule {
        RawRule {
            cfa_offset: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            rbp_offset: i16::from_le_bytes([b[4], b[5]]),
            kind: b[6],
            rbp_kind: b[7],
        }
    }

    /// The rule this encodes, or `None` for bytes no encoder produces (the
    /// deserializer rejects those, so a table in memory always decodes).
    pub fn decode(self) -> Option<UnwindRule> {
        let plain = |u: UnwindRule| {
            (self.cfa_offset == 0 && self.rbp_offset == 0 && self.rbp_kind == 0).then_some(u)
        };
        match self.kind {
            KIND_CFA_RSP | KIND_CFA_RBP => {
                let rbp = match self.rbp_kind {
                    RBP_UNCHANGED if self.rbp_offset == 0 => RbpRule::Unchanged,
                    RBP_AT_CFA => RbpRule::AtCfa(self.rbp_offset),
                    RBP_UNKNOWN if self.rbp_offset == 0 => RbpRule::Unknown,
                    _ => return None,
                };
                let base = if self.kind == KIND_CFA_RSP {
                    CfaBase::Rsp
                } else {
                    CfaBase::Rbp
                };
                Some(UnwindRule::Cfa {
                    base,
                    offset: self.cfa_offset,
                    rbp,
                })
            }
            KIND_PLT => {
                let threshold = u8::try_from(self.rbp_offset).ok().filter(|t| *t < 16)?;
                (self.rbp_kind == 0).then_some(UnwindRule::Plt {
                    base_offset: self.cfa_offset,
                    threshold,
                })
            }
            KIND_SIGNAL => plain(UnwindRule::SignalFrame),
            KIND_END => plain(UnwindRule::EndOfStack),
            KIND_UNSUPPORTED_EXPRESSION => {
                plain(UnwindRule::Unsupported(Unsupported::CfaExpression))
            }
            KIND_UNSUPPORTED_REGISTER => plain(UnwindRule::Unsupported(Unsupported::CfaRegister)),
            KIND_UNSUPPORTED_RETURN_ADDRESS => {
                plain(UnwindRule::Unsupported(Unsupported::ReturnAddress))
            }
            KIND_UNSUPPORTED_OFFSET_RANGE => {
                plain(UnwindRule::Unsupported(Unsupported::OffsetRange))
            }
            _ => None,
        }
    }
}

impl UnwindRule {
    /// The BPF encoding. A PLT threshold of 16 or more never matches `rip & 15`
    /// and is not a linker's output; it encodes as an unsupported expression.
    pub fn encode(self) -> RawRule {
        let plain = |kind| RawRule {
            kind,
            ..RawRule::default()
        };
        match self {
            UnwindRule::Cfa { base, offset, rbp } => {
                let (rbp_kind, rbp_offset) = match rbp {
                    RbpRule::Unchanged => (RBP_UNCHANGED, 0),
                    RbpRule::AtCfa(n) => (RBP_AT_CFA, n),
                    RbpRule::Unknown => (RBP_UNKNOWN, 0),
                };
                RawRule {
                    cfa_offset: offset,
                    rbp_offset,
                    kind: match base {
                        CfaBase::Rsp => KIND_CFA_RSP,
                        CfaBase::Rbp => KIND_CFA_RBP,
                    },
                    rbp_kind,
                }
            }
            UnwindRule::Plt {
                base_offset,
                threshold,
            } if threshold < 16 => RawRule {
                cfa_offset: base_offset,
                rbp_offset: i16::from(threshold),
                kind: KIND_PLT,
                rbp_kind: 0,
            },
            UnwindRule::Plt { .. } => plain(KIND_UNSUPPORTED_EXPRESSION),
            UnwindRule::SignalFrame => plain(KIND_SIGNAL),
            UnwindRule::EndOfStack => plain(KIND_END),
            UnwindRule::Unsupported(Unsupported::CfaExpression) => {
                plain(KIND_UNSUPPORTED_EXPRESSION)
            }
            UnwindRule::Unsupported(Unsupported::CfaRegister) => plain(KIND_UNSUPPORTED_REGISTER),
            UnwindRule::Unsupported(Unsupported::ReturnAddress) => {
                plain(KIND_UNSUPPORTED_RETURN_ADDRESS)
            }
            UnwindRule::Unsupported(Unsupported::OffsetRange) => {
                plain(KIND_UNSUPPORTED_OFFSET_RANGE)
            }
        }
    }

    /// The rule a lookup returns for it: `encode` then `decode` (identity except
    /// for a PLT threshold of 16 or more).
    pub fn canonical(self) -> UnwindRule {
        // `encode` only produces decodable bytes (tested over every variant).
        self.encode().decode().unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_roundtrips_through_its_bpf_encoding() {
        let rules = [
            UnwindRule::Cfa {
                base: CfaBase::Rsp,
                offset: 8,
                rbp: RbpRule::Unchanged,
            },
            UnwindRule::Cfa {
                base: CfaBase::Rbp,
                offset: 16,
                rbp: RbpRule::AtCfa(-16),
            },
            UnwindRule::Cfa {
                base: CfaBase::Rsp,
                offset: -4,
                rbp: RbpRule::Unknown,
            },
            UnwindRule::Plt {
                base_offset: 8,
                threshold: 11,
            },
            UnwindRule::SignalFrame,
            UnwindRule::EndOfStack,
            UnwindRule::Unsupported(Unsupported::CfaExpression),
            UnwindRule::Unsupported(Unsupported::CfaRegister),
            UnwindRule::Unsupported(Unsupported::ReturnAddress),
            UnwindRule::Unsupported(Unsupported::OffsetRange),
        ];
        for r in rules {
            let raw = r.encode();
            assert_eq!(RawRule::from_le_bytes(raw.to_le_bytes()), raw);
            assert_eq!(raw.decode(), Some(r), "{r:?}");
        }
        assert_eq!(std::mem::size_of::<RawRule>(), RawRule::SIZE);
    }

    #[test]
    fn bytes_no_encoder_produces_are_refused() {
        let bad = [
            RawRule {
                kind: 9,
                ..RawRule::default()
            },
            RawRule {
                kind: KIND_END,
                cfa_offset: 1,
                ..RawRule::default()
            },
            RawRule {
                kind: KIND_CFA_RSP,
                rbp_kind: 3,
                ..RawRule::default()
            },
            RawRule {
                kind: KIND_PLT,
                rbp_offset: 16,
                ..RawRule::default()
            },
        ];
        for b in bad {
            assert_eq!(b.decode(), None, "{b:?}");
        }
    }
}
