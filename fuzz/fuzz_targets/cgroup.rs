//! `/proc/PID/cgroup` contents: a container ID, when found, is 64 lower-case hex
//! digits taken from the input.
#![no_main]

use kestrel_symbols::container_id_from_cgroup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(id) = container_id_from_cgroup(text) {
        assert_eq!(id.len(), 64);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(text.to_ascii_lowercase().contains(&id));
    }
});
