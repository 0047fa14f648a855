//! The behaviour suite again, with every dispatcher on a journal of its own (see
//! `behaviour/common.rs`, `JOURNAL`): the same behaviour, checked against both storage kinds.

#[path = "behaviour/main.rs"]
mod behaviour;
