//! A line of the TCP source, with a token required (see `mailroom_actors::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_actors::fuzzing::tcp_line(data));
