//! Tests of the service as its users see it: the real server started on 127.0.0.1 port 0, real
//! HTTP and TCP, the built binary for the command line and for signals.

mod common;

mod api;
mod attacks;
mod auth;
mod backpressure;
mod bad_input;
mod binary;
mod cluster;
mod config;
mod durability;
mod examples;
mod soak;
mod tcp;
mod ui;
