//! A submission body, as `POST /v1/messages` reads it (see `mailroom_actors::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_actors::fuzzing::submission(data));
