//! Portal sessions, kept in the vault's database (table `portal_sessions`, keyed by the BLAKE3
//! hash of the session id, never the id itself), and the login throttle (in memory, per client
//! address).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension};

use super::Portal;
use crate::db::{now_ms, sql};
use crate::error::VaultError;

/// How long a session lasts.
pub(super) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions (those expiring first go first).
const MAX_SESSIONS: i64 = 1024;
/// Failed logins from one address within [`THROTTLE_WINDOW`] before the next is refused.
pub(super) const MAX_FAILED_LOGINS: usize = 5;
/// The window the failed logins are counted in.
pub(super) const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// At most this many client addresses are tracked (the oldest failures go first).
const MAX_TRACKED: usize = 10_000;

/// A logged-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token every form of this session carries.
    pub(crate) csrf: String,
}

/// What the database keeps of a session id: its BLAKE3 hash, as hex.
pub(crate) fn id_hash(id: &str) -> String {
    blake3::hash(id.as_bytes()).to_hex().to_string()
}

/// 32 random bytes from the OS, as hex.
pub(super) fn random_hex() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Portal {
    /// The live session of id `id` (an expired one is deleted).
    pub(super) fn session(&self, id: &str) -> Option<Session> {
        let h = id_hash(id);
        let now = now_ms();
        let r = self.vault.db.tx("reading a portal session", |tx| {
            let row: Option<(String, i64)> = tx
                .query_row(
                    "SELECT csrf, expires_at FROM portal_sessions WHERE id_hash = ?1",
                    params![h],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql("reading a portal session"))?;
            match row {
                Some((csrf, exp)) if exp > now => Ok(Some(Session { csrf })),
                Some(_) => {
                    tx.execute("DELETE FROM portal_sessions WHERE id_hash = ?1", params![h])
                        .map_err(sql("deleting an expired portal session"))?;
                    Ok(None)
                }
                None => Ok(None),
            }
        });
        match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("portal session lookup failed: {e}");
                None
            }
        }
    }

    /// A new session: its id (for the cookie only) and the session.
    pub(super) fn new_session(&self) -> Result<(String, Session), String> {
        let id = random_hex()?;
        let sess = Session {
            csrf: random_hex()?,
        };
        let now = now_ms();
        let expires = now.saturating_add(SESSION_TTL.as_millis() as i64);
        self.vault
            .db
            .tx("recording a portal session", |tx| {
                tx.execute(
                    "DELETE FROM portal_sessions WHERE expires_at <= ?1",
                    params![now],
                )
                .map_err(sql("deleting expired portal sessions"))?;
                tx.execute(
                    "INSERT INTO portal_sessions (id_hash, csrf, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id_hash(&id), sess.csrf, now, expires],
                )
                .map_err(sql("recording a portal session"))?;
                tx.execute(
                    "DELETE FROM portal_sessions WHERE id_hash NOT IN (SELECT id_hash FROM
                     portal_sessions ORDER BY expires_at DESC LIMIT ?1)",
                    params![MAX_SESSIONS],
                )
                .map_err(sql("trimming portal sessions"))?;
                Ok::<_, VaultError>(())
            })
            .map_err(|e| e.to_string())?;
        Ok((id, sess))
    }

    /// Ends session `id`.
    pub(super) fn end_session(&self, id: &str) {
        let h = id_hash(id);
        let r = self.vault.db.tx("ending a portal session", |tx| {
            tx.execute("DELETE FROM portal_sessions WHERE id_hash = ?1", params![h])
                .map_err(sql("ending a portal session"))
        });
        if let Err(e) = r {
            tracing::warn!("portal sign-out: {e}");
        }
    }
}

/// Failed logins per client address (a sliding window of [`THROTTLE_WINDOW`]).
#[derive(Default)]
pub(crate) struct Throttle {
    failures: HashMap<String, VecDeque<Instant>>,
}

impl Throttle {
    fn prune(q: &mut VecDeque<Instant>, now: Instant) {
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= THROTTLE_WINDOW)
        {
            q.pop_front();
        }
    }

    /// `Some(wait)` when `addr` failed [`MAX_FAILED_LOGINS`] times within the window: the time
    /// until the oldest of them leaves it (at least 1 s).
    pub(crate) fn refused(&mut self, addr: &str, now: Instant) -> Option<Duration> {
        let q = self.failures.get_mut(addr)?;
        Self::prune(q, now);
        if q.len() < MAX_FAILED_LOGINS {
            if q.is_empty() {
                self.failures.remove(addr);
            }
            return None;
        }
        let oldest = *q.front()?;
        let left = THROTTLE_WINDOW.saturating_sub(now.saturating_duration_since(oldest));
        Some(left.max(Duration::from_secs(1)))
    }

    /// Records a failed login from `addr`.
    pub(crate) fn failed(&mut self, addr: &str, now: Instant) {
        if self.failures.len() >= MAX_TRACKED && !self.failures.contains_key(addr) {
            self.failures.retain(|_, q| {
                Self::prune(q, now);
                !q.is_empty()
            });
            if self.failures.len() >= MAX_TRACKED {
                let oldest = self
                    .failures
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.failures.remove(&k);
                }
            }
        }
        let q = self.failures.entry(addr.to_string()).or_default();
        Self::prune(q, now);
        q.push_back(now);
    }

    /// A successful login from `addr`: its failures are forgotten.
    pub(crate) fn succeeded(&mut self, addr: &str) {
        self.failures.remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_within_a_minute_refuse_the_sixth_until_the_oldest_leaves() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(t.refused("a", t0 + Duration::from_secs(i)), None, "{i}");
            t.failed("a", t0 + Duration::from_secs(i));
        }
        let wait = t.refused("a", t0 + Duration::from_secs(10));
        assert_eq!(wait, Some(Duration::from_secs(50)));
        assert_eq!(
            t.refused("b", t0 + Duration::from_secs(10)),
            None,
            "per address"
        );
        // The oldest failure leaves the window after 60 s: one more try is allowed.
        assert_eq!(t.refused("a", t0 + Duration::from_secs(60)), None);
        t.failed("a", t0 + Duration::from_secs(60));
        let later = t0 + Duration::from_millis(60_500);
        assert!(t.refused("a", later).is_some());
        // A success forgets them.
        t.succeeded("a");
        assert_eq!(t.refused("a", later), None);
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_are_not_refused() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..20 {
            let at = t0 + Duration::from_secs(15 * i);
            assert_eq!(t.refused("a", at), None, "{i}");
            t.failed("a", at);
        }
    }

    #[test]
    fn the_hash_is_not_the_id() {
        let h = id_hash("abc");
        assert_ne!(h, "abc");
        assert_eq!(h.len(), 64);
        assert_eq!(h, id_hash("abc"));
    }
}
