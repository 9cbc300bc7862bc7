//! A reference unwinder in Rust: the steps the BPF program takes, over the same
//! tables, so tests can prove a table right before any BPF exists (and so BPF
//! output can later be compared with it).

use crate::rule::{CfaBase, RbpRule, UnwindRule};

/// The registers unwinding needs. `rbp` is `None` once no rule says where the
/// caller's rbp is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: Option<u64>,
}

/// Offsets in the `ucontext_t` a signal trampoline finds at rsp (the kernel's
/// `rt_sigframe` after the handler's `ret` popped `pretcode`): `uc_mcontext`
/// starts at 40 (`uc_flags`, `uc_link`, `uc_stack` before it), and its general
/// registers are r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
pub const UCONTEXT_RBP: u64 = 40 + 10 * 8;
pub const UCONTEXT_RSP: u64 = 40 + 15 * 8;
pub const UCONTEXT_RIP: u64 = 40 + 16 * 8;

/// What one step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The caller's registers. `return_address` says whether `rip` is a return
    /// address (look it up at `rip - 1`) or an exact pc (after a signal frame).
    Caller { regs: Regs, return_address: bool },
    /// The rule marks the outermost frame.
    EndOfStack,
    /// The rule cannot be followed, or memory could not be read, or the
    /// stack went backwards (a wrong rule would otherwise loop).
    Stuck(&'static str),
}

/// Unwinds one frame with `rule`; `read` reads 8 bytes of the target's memory.
pub fn step(rule: UnwindRule, regs: &Regs, mut read: impl FnMut(u64) -> Option<u64>) -> Step {
    let (cfa, rbp_rule) = match rule {
        UnwindRule::Cfa { base, offset, rbp } => {
            let base = match base {
                CfaBase::Rsp => regs.rsp,
                CfaBase::Rbp => match regs.rbp {
                    Some(v) => v,
                    None => return Step::Stuck("CFA from rbp, and rbp is unknown"),
                },
            };
            (base.wrapping_add(offset as i64 as u64), rbp)
        }
        UnwindRule::Plt {
            base_offset,
            threshold,
        } => {
            let pushed = if regs.rip & 15 >= u64::from(threshold) {
                8
            } else {
                0
            };
            (
                regs.rsp
                    .wrapping_add(base_offset as i64 as u64)
                    .wrapping_add(pushed),
                RbpRule::Unchanged,
            )
        }
        UnwindRule::SignalFrame => {
            let at = |off: u64| regs.rsp.checked_add(off);
            let (Some(rip), Some(rsp)) = (
                at(UCONTEXT_RIP).and_then(&mut read),
                at(UCONTEXT_RSP).and_then(&mut read),
            ) else {
                return Step::Stuck("signal frame's ucontext unreadable");
            };
            let rbp = at(UCONTEXT_RBP).and_then(&mut read);
            return Step::Caller {
                regs: Regs { rip, rsp, rbp },
                return_address: false,
            };
        }
        UnwindRule::EndOfStack => return Step::EndOfStack,
        UnwindRule::Unsupported(_) => return Step::Stuck("rule marked unsupported"),
    };
    if cfa <= regs.rsp {
        return Step::Stuck("CFA not above rsp");
    }
    let Some(rip) = read(cfa - 8) else {
        return Step::Stuck("return address unreadable");
    };
    let rbp = match rbp_rule {
        RbpRule::Unchanged => regs.rbp,
        RbpRule::AtCfa(n) => match read(cfa.wrapping_add(n as i64 as u64)) {
            Some(v) => Some(v),
            None => return Step::Stuck("saved rbp unreadable"),
        },
        RbpRule::Unknown => None,
    };
    Step::Caller {
        regs: Regs { rip, rsp: cfa, rbp },
        return_address: true,
    }
}

/// How a whole walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// An end-of-stack rule: the stack is complete.
    Complete,
    /// No table covers a pc (BPF would try frame pointers here).
    NoRule,
    Stuck(&'static str),
    /// `max_frames` reached.
    Truncated,
}

/// Unwinds from `regs` (the interrupted thread's registers). `find` returns the
/// rule for a pc lookup address (already adjusted: `pc - 1` for return
/// addresses). Returns every frame's pc, leaf first.
pub fn unwind(
    regs: Regs,
    max_frames: usize,
    mut find: impl FnMut(u64) -> Option<UnwindRule>,
    mut read: impl FnMut(u64) -> Option<u64>,
) -> (Vec<u64>, End) {
    let mut pcs = Vec::new();
    let mut regs = regs;
    let mut return_address = false;
    while pcs.len() < max_frames {
        pcs.push(regs.rip);
        let at = if return_address {
            regs.rip.wrapping_sub(1)
        } else {
            regs.rip
        };
        let Some(rule) = find(at) else {
            return (pcs, End::NoRule);
        };
        match step(rule, &regs, &mut read) {
            Step::Caller {
                regs: next,
                return_address: ra,
            } => {
                regs = next;
                return_address = ra;
            }
            Step::EndOfStack => return (pcs, End::Complete),
            Step::Stuck(why) => return (pcs, End::Stuck(why)),
        }
    }
    (pcs, End::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plt_rule_adds_the_pushed_index_from_byte_eleven() {
        let rule = UnwindRule::Plt {
            base_offset: 8,
            threshold: 11,
        };
        let mem = |a: u64| Some(a * 2);
        for (rip, cfa) in [(0x1000, 0x508), (0x100a, 0x508), (0x100b, 0x510)] {
            let regs = Regs {
                rip,
                rsp: 0x500,
                rbp: Some(1),
            };
            assert_eq!(
                step(rule, &regs, mem),
                Step::Caller {
                    regs: Regs {
                        rip: (cfa - 8) * 2,
                        rsp: cfa,
                        rbp: Some(1)
                    },
                    return_address: true
                }
            );
        }
    }

    #[test]
    fn a_rule_that_does_not_move_the_stack_up_stops() {
        let rule = UnwindRule::Cfa {
            base: CfaBase::Rbp,
            offset: 16,
            rbp: RbpRule::AtCfa(-16),
        };
        let regs = Regs {
            rip: 1,
            rsp: 0x1000,
            rbp: Some(0x100),
        };
        assert!(matches!(step(rule, &regs, |_| Some(0)), Step::Stuck(_)));
    }
}
