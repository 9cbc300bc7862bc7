//! Ring buffer records: whatever bytes the ring hands over, `parse_record`
//! returns a record or an error, and a record never claims more than it carries.
#![no_main]

use kestrel_probes::record::{parse_record, Record, HEADER_BYTES, WAKE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match parse_record(bytes) {
        Ok(Record::Stack { sample, .. }) => {
            let frames = sample.kernel_stack.len() + sample.user_stack.len();
            assert!(HEADER_BYTES + frames * 8 <= bytes.len());
            assert!(
                sample.comm.len() <= 16 * 3,
                "comm is at most 16 bytes, lossy"
            );
        }
        Ok(Record::Wake { .. }) => assert!(bytes.len() >= WAKE_BYTES),
        Err(_) => {}
    }
});
