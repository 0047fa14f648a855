//! The timer source: a `[[schedule]]` entry as an actor that submits `kind` with `payload` every
//! interval, or once after a delay (asyncio's `call_later`).
//!
//! A schedule is checked when it starts: its kind must have a route and its payload must pass
//! that route's checks (the processor's validation, as on submission), or it is refused with a
//! [`ScheduleError`]. A tick whose submission is rejected later (the route is full, degraded or
//! draining) is logged and skipped; the schedule keeps running. The actor stops on
//! [`StopTimer`] (sent at shutdown), when its [`ScheduleHandle`] is cancelled, or after its
//! single run.

use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use crate::dispatcher::Dispatcher;
use crate::envelope::{Kind, Message, Source};

/// When a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// Repeatedly, every interval (the first run one interval after start).
    Interval(Duration),
    /// Once, after the delay.
    Once(Duration),
}

/// A periodic or one-shot message.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The kind to submit.
    pub kind: String,
    /// The payload of every submission.
    pub payload: Value,
    /// When.
    pub when: Every,
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No route has the schedule's kind.
    #[error("schedule names kind {0:?}, which has no route")]
    NoRoute(String),
    /// An interval of zero would spin.
    #[error("a schedule's interval must be at least 1 ms")]
    ZeroInterval,
    /// Every tick would be rejected: the payload fails the route's checks.
    #[error("schedule for kind {kind:?} would be rejected at every tick: {reason}")]
    Invalid {
        /// The schedule's kind.
        kind: String,
        /// Why its message is refused.
        reason: String,
    },
}

/// Stops a timer source.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopTimer;

/// A running schedule; [`ScheduleHandle::cancel`] stops it.
#[derive(Debug, Clone)]
pub struct ScheduleHandle {
    pub(crate) addr: Addr<TimerSource>,
}

impl ScheduleHandle {
    /// Stops the schedule (runs already submitted are not affected).
    pub fn cancel(&self) {
        self.addr.do_send(StopTimer);
    }
}

/// Checks a schedule without starting it; returns its kind.
pub(crate) fn check(dispatcher: &Dispatcher, s: &Schedule) -> Result<Kind, ScheduleError> {
    let no_route = || ScheduleError::NoRoute(s.kind.clone());
    let kind = Kind::new(&s.kind).map_err(|_| no_route())?;
    let probe = Message::new(kind.as_str(), s.payload.clone());
    let checked = dispatcher.validate(&probe).ok_or_else(no_route)?;
    if s.when == Every::Interval(Duration::ZERO) {
        return Err(ScheduleError::ZeroInterval);
    }
    checked.map_err(|reason| ScheduleError::Invalid {
        kind: s.kind.clone(),
        reason,
    })?;
    Ok(kind)
}

/// The timer source actor.
pub struct TimerSource {
    dispatcher: Dispatcher,
    kind: Kind,
    payload: Value,
    when: Every,
}

impl TimerSource {
    pub(crate) fn start(
        dispatcher: Dispatcher,
        s: Schedule,
        arbiter: &ArbiterHandle,
    ) -> Result<ScheduleHandle, ScheduleError> {
        let kind = check(&dispatcher, &s)?;
        let (payload, when) = (s.payload, s.when);
        let addr = TimerSource::start_in_arbiter(arbiter, move |_| TimerSource {
            dispatcher,
            kind,
            payload,
            when,
        });
        Ok(ScheduleHandle { addr })
    }

    fn fire(&mut self) {
        let msg = Message::new(self.kind.as_str(), self.payload.clone()).source(Source::Timer);
        match self.dispatcher.submit(msg) {
            Ok(id) => tracing::debug!(%id, kind = %self.kind, "schedule fired"),
            Err(e) => {
                tracing::warn!(kind = %self.kind, error = %e, "schedule tick was rejected; skipped")
            }
        }
    }
}

impl Actor for TimerSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.when {
            Every::Interval(d) => {
                ctx.run_interval(d, |act, _| act.fire());
            }
            Every::Once(d) => {
                ctx.run_later(d, |act, ctx| {
                    act.fire();
                    ctx.stop();
                });
            }
        }
    }
}

impl Handler<StopTimer> for TimerSource {
    type Result = ();
    fn handle(&mut self, _: StopTimer, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
