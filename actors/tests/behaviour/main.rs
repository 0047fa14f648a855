//! Behaviour tests of the actor library, one file per topic. Each test builds its own dispatcher
//! inside its own actix System, asserts exact outcomes, and waits on conditions with deadlines.

mod common;

mod attached;
mod backpressure;
mod cancel;
mod cpu;
mod fetch;
mod gather;
mod retries;
mod routing;
mod shutdown;
mod supervision;
mod time;
