//! One timer per actor, kept armed for the earliest of the instants it waits for (the router's
//! delayed envelopes, a worker's CPU run deadlines).
//!
//! Arming an earlier instant cancels the later timer; arming a later one keeps the earlier. When
//! the timer fires, the alarm is disarmed before the actor's callback runs, so the callback can
//! arm it again. Nothing here fails; a context that stops (a supervised restart) drops its timers,
//! and the actor calls [`Alarm::reset`] before arming again.

use std::time::Instant;

use actix::prelude::*;

/// The armed instant and its timer, if any.
#[derive(Debug, Default)]
pub(crate) struct Alarm(Option<(Instant, SpawnHandle)>);

impl Alarm {
    /// Forgets the timer (after a restart dropped it with the old context).
    pub(crate) fn reset(&mut self) {
        self.0 = None;
    }

    /// Arms for `at` unless already armed at or before it. At `at`, the alarm that `slot`
    /// returns is disarmed and `fire` runs.
    pub(crate) fn arm<A>(
        &mut self,
        at: Instant,
        ctx: &mut Context<A>,
        slot: fn(&mut A) -> &mut Alarm,
        fire: fn(&mut A, &mut Context<A>),
    ) where
        A: Actor<Context = Context<A>>,
    {
        if let Some((armed, handle)) = self.0 {
            if armed <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = at.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(wait, move |act, ctx| {
            slot(act).reset();
            fire(act, ctx);
        });
        self.0 = Some((at, handle));
    }
}
