//! Helpers shared by the encoders that walk a sample's frames.

use kestrel_model::Frame;

/// Splits a leaf-first frame list into the frames of each sampled address.
///
/// The model expands an address that hit inlined code into consecutive frames sharing
/// that address: the inlined callees (`inlined = true`) first, the outer function last.
/// A group therefore ends at the first non-inlined frame, or where the address changes.
/// Ending at the non-inlined frame matters for direct recursion, where two real frames
/// can carry the same return address one after the other.
pub(crate) fn address_groups(frames: &[Frame]) -> AddressGroups<'_> {
    AddressGroups { rest: frames }
}

pub(crate) struct AddressGroups<'a> {
    rest: &'a [Frame],
}

impl<'a> Iterator for AddressGroups<'a> {
    type Item = &'a [Frame];

    fn next(&mut self) -> Option<&'a [Frame]> {
        let first = self.rest.first()?;
        let mut len = 1;
        let mut previous = first;
        while previous.inlined {
            match self.rest.get(len) {
                Some(next) if next.address == first.address => {
                    previous = next;
                    len += 1;
                }
                _ => break,
            }
        }
        let (group, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(group)
    }
}

/// Converts a counter to the signed 64-bit integers protobuf profiles carry,
/// saturating instead of wrapping for values no real profile reaches.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_model::FrameKind;
    use std::sync::Arc;

    fn frame(address: u64, name: &str, inlined: bool) -> Frame {
        Frame {
            function: Some(Arc::from(name)),
            inlined,
            ..Frame::unknown(FrameKind::Native, address, None)
        }
    }

    fn names(groups: AddressGroups<'_>) -> Vec<Vec<String>> {
        groups
            .map(|g| g.iter().map(Frame::label).collect())
            .collect()
    }

    #[test]
    fn inline_chain_is_one_group_and_recursion_is_not() {
        let frames = vec![
            frame(0x10, "inner", true),
            frame(0x10, "middle", true),
            frame(0x10, "outer", false),
            // Direct recursion: same return address, two real frames.
            frame(0x20, "rec", false),
            frame(0x20, "rec", false),
            frame(0x30, "main", false),
        ];
        assert_eq!(
            names(address_groups(&frames)),
            vec![
                vec!["inner", "middle", "outer"],
                vec!["rec"],
                vec!["rec"],
                vec!["main"]
            ]
        );
    }

    #[test]
    fn inlined_frame_followed_by_other_address_ends_its_group() {
        let frames = vec![frame(0x10, "lonely", true), frame(0x20, "caller", false)];
        assert_eq!(
            names(address_groups(&frames)),
            vec![vec!["lonely"], vec!["caller"]]
        );
        assert_eq!(address_groups(&[]).count(), 0);
    }
}
