//! Supervision helpers: turning a caught panic into text, and the restart budget.
//!
//! actix restarts a supervised actor only when it stops itself, and a panic in a handler kills
//! the actor (and every message queued behind it). So processors are run under `catch_unwind`;
//! the worker turns the panic into a `failed` outcome and then stops itself on purpose so its
//! `Supervisor` restarts it with a fresh processor. `RestartWindow` is the OTP "max intensity"
//! rule: too many restarts within a window mark the route degraded, and the pause before a
//! restarted processor takes work doubles with each restart in the window.

use std::any::Any;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::settings::RestartPolicy;

/// The text of a caught panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// What the budget says about one restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RestartDecision {
    /// Pause before the restarted processor takes work.
    pub backoff: Duration,
    /// Whether the route has gone over its budget and should be degraded for one window.
    pub degrade: bool,
}

/// Restarts within the sliding window.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    /// Records a restart at `now` and decides the backoff.
    pub(crate) fn record(&mut self, now: Instant, policy: &RestartPolicy) -> RestartDecision {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) > policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        let n = self.recent.len() as u32;
        let backoff = if n <= 1 {
            Duration::ZERO
        } else {
            policy
                .backoff
                .saturating_mul(1u32 << (n - 2).min(20))
                .min(policy.max_backoff)
        };
        RestartDecision {
            backoff,
            degrade: n > policy.max_restarts,
        }
    }
}

/// The least time `policy` lets `max_restarts + 1` restarts take (the sum of the backoffs
/// before them): if it is not shorter than the window, a crash-looping processor can never go
/// over the budget and its route is never degraded.
pub fn time_to_degrade(policy: &RestartPolicy) -> Duration {
    (2..=policy.max_restarts.saturating_add(1))
        .map(|n| {
            policy
                .backoff
                .saturating_mul(1u32 << (n - 2).min(20))
                .min(policy.max_backoff)
        })
        .fold(Duration::ZERO, Duration::saturating_add)
}

/// Whether `policy` can degrade a crash-looping route at all: `Err` says why not, in words that
/// name the settings (the library's check and the service's config check both use it).
pub fn check_restart_budget(policy: &RestartPolicy) -> Result<(), String> {
    let needed = time_to_degrade(policy);
    if needed < policy.window {
        return Ok(());
    }
    Err(format!(
        "{} restarts need at least {} ms of restart backoff (the backoff doubling up to its \
         maximum), longer than the {} ms window: a crash-looping route would never be degraded \
         (lower max_restarts or the backoff, or widen the window)",
        policy.max_restarts.saturating_add(1),
        needed.as_millis(),
        policy.window.as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_budget_degrades() {
        let policy = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(25),
        };
        let mut w = RestartWindow::default();
        let t = Instant::now();
        let d: Vec<_> = (0..5)
            .map(|i| w.record(t + Duration::from_millis(i), &policy))
            .collect();
        assert_eq!(d[0].backoff, Duration::ZERO);
        assert_eq!(d[1].backoff, Duration::from_millis(10));
        assert_eq!(d[2].backoff, Duration::from_millis(20));
        assert_eq!(d[3].backoff, Duration::from_millis(25), "capped");
        assert!(
            !d[2].degrade && d[3].degrade,
            "the 4th restart in the window is over budget"
        );
        // After the window passes, the count starts again.
        let later = w.record(t + Duration::from_secs(30), &policy);
        assert_eq!(
            later,
            RestartDecision {
                backoff: Duration::ZERO,
                degrade: false
            }
        );
    }

    #[test]
    fn the_default_budget_degrades_a_crash_loop_within_its_window() {
        let policy = RestartPolicy::default();
        // 5 + 10 + … + 640 + 1000 + 1000 ms of backoff before the 11th restart.
        assert_eq!(time_to_degrade(&policy), Duration::from_millis(3275));
        assert!(time_to_degrade(&policy) < policy.window);
        let hundred = RestartPolicy {
            max_restarts: 100,
            ..policy
        };
        assert!(time_to_degrade(&hundred) > hundred.window, "unreachable");
    }

    #[test]
    fn panic_payloads_become_text() {
        let e = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*e), "boom 7");
        let e = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*e), "static");
    }
}
