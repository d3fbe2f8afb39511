//! Kinesis CBOR 1.1 request bodies (what the Java SDK v2 and the KCL send) through
//! `sluice_compat::kinesis::handle` (see `sluice_fuzz::kinesis` for the input and the
//! invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::kinesis::run(data, sluice_compat::kinesis::Encoding::Cbor);
});
