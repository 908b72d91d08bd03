//! The write gate of a multi-VM consistency cut.
//!
//! A cut across several VMs' journals is consistent (no journal has a write that causally
//! follows a write another journal lacks) when every journal's marker is appended while **all**
//! of them hold their writes: the coordinator holds every journal first, and only when all are
//! held appends the markers and releases. A write acknowledged to one guest before the holds
//! began is in its journal before that journal's marker; a write issued after another guest's
//! acknowledgement that came after all holds began is blocked until its own journal's marker is
//! in (see `docs/ARCHITECTURE.md`, "Multi-VM consistency").
//!
//! A hold has a deadline: a coordinator that dies never stalls a guest longer than that. A
//! marker is appended only while the hold is still valid (checked under the gate's lock, so no
//! write can slip past an expired hold before the marker); an expired hold fails the cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Gate {
    /// Held until this instant.
    held: Mutex<Option<Instant>>,
    cv: Condvar,
    /// Mirrors `held.is_some()` (may stay true past an expiry nobody observed yet), for a cheap
    /// [`Gate::may_wait`].
    flag: AtomicBool,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, Option<Instant>> {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_some_and(|until| Instant::now() >= until) {
            *g = None;
            self.flag.store(false, Ordering::Release);
        }
        g
    }

    /// Whether a write may wait in [`Gate::pass`] now (cheap: no lock).
    pub(crate) fn may_wait(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Waits while the gate is held (at most until the hold's deadline).
    pub(crate) fn pass(&self) {
        let mut g = self.state();
        while let Some(until) = *g {
            let now = Instant::now();
            if now >= until {
                *g = None;
                self.flag.store(false, Ordering::Release);
                break;
            }
            g = self
                .cv
                .wait_timeout(g, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Holds the gate until `until`; false if it is held already.
    pub(crate) fn hold(&self, until: Instant) -> bool {
        let mut g = self.state();
        if g.is_some() {
            return false;
        }
        *g = Some(until);
        self.flag.store(true, Ordering::Release);
        true
    }

    /// Runs `f` while the hold is still valid, then releases it; `None` (and `f` not run) if
    /// the gate is not held (never was, released, or expired).
    pub(crate) fn release_with<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let mut g = self.state();
        g.as_ref()?;
        let out = f();
        *g = None;
        self.flag.store(false, Ordering::Release);
        self.cv.notify_all();
        Some(out)
    }

    /// Releases the gate (nothing if it is not held).
    pub(crate) fn release(&self) {
        *self.state() = None;
        self.flag.store(false, Ordering::Release);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_held_gate_blocks_until_released_and_a_marker_runs_only_while_held() {
        let g = Arc::new(Gate::default());
        assert!(g.hold(Instant::now() + Duration::from_secs(30)));
        assert!(
            !g.hold(Instant::now() + Duration::from_secs(30)),
            "held twice"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let g2 = g.clone();
        let t = std::thread::spawn(move || {
            g2.pass();
            tx.send(()).ok();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "passed a held gate"
        );
        assert_eq!(g.release_with(|| 7), Some(7));
        rx.recv_timeout(Duration::from_secs(10)).expect("released");
        t.join().expect("thread");
        assert_eq!(g.release_with(|| 8), None, "not held any more");
    }

    #[test]
    fn an_expired_hold_lets_writes_through_and_refuses_the_marker() {
        let g = Gate::default();
        assert!(g.hold(Instant::now() + Duration::from_millis(50)));
        let t0 = Instant::now();
        g.pass();
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(g.release_with(|| ()), None);
        assert!(
            g.hold(Instant::now() + Duration::from_secs(1)),
            "hold again"
        );
        g.release();
        g.pass();
    }
}
