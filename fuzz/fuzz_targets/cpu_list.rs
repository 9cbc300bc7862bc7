//! CPU lists as sysfs writes them (`0-3,8,10-11`): never a panic, and a parsed
//! set lists each CPU once, in order.
#![no_main]

use kestrel_sizing::CpuSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(set) = CpuSet::parse(text) {
        let cpus: Vec<u32> = set.iter().collect();
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(cpus.len(), set.len() as usize);
    }
});
