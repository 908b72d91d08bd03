//! Pins (`vms/<vm>/pins/<name>.json`): a reader that holds a recovery point open for a long
//! time — a DR drill's copy boots from it and reads it until cleanup — pins the journal range it
//! reads, so that retention keeps its base point and every record from the base to the pinned
//! position, whatever the policy says and even after the point itself is stored or thinned.
//!
//! Format (JSON, version 1, frozen): `{"format": "lifeboat-pin", "version": 1, "base_seq": B,
//! "seq": S, "note": "...", "lease_secs": L}` — keep the stored point at position `B` (0: none,
//! the reader needs no base) and the journal records `B + 1 ..= S`. `lease_secs` (optional,
//! added in the same version: older readers ignore it and keep the pin for good) makes the pin
//! a **lease**: it counts only while its object was written less than `L` seconds ago, and its
//! holder writes it again well before that ([`Store::put_pin`]). A reader that may be killed
//! (a restore) takes a lease, so a pin it leaves behind lapses; a drill, which lasts until its
//! cleanup, pins without one. [`Store::live_pins`] is what retention honours.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lifeboat_types::VmId;
use serde::{Deserialize, Serialize};

use crate::backend::PutMode;
use crate::error::{Result, StoreError};
use crate::format::decode_json;
use crate::store::Store;

/// `"format"` of a pin.
pub const PIN_FORMAT: &str = "lifeboat-pin";

/// A pin (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Always [`PIN_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The stored base point's position (0: none).
    pub base_seq: u64,
    /// The pinned position.
    pub seq: u64,
    /// Who pinned it and why.
    pub note: String,
    /// A lease: the pin lapses once its object is this many seconds old (see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
}

impl PinRecord {
    /// A pin of `base_seq + 1 ..= seq`.
    pub fn new(base_seq: u64, seq: u64, note: &str) -> PinRecord {
        PinRecord {
            format: PIN_FORMAT.to_string(),
            version: 1,
            base_seq,
            seq,
            note: note.to_string(),
            lease_secs: None,
        }
    }

    /// A pin of `base_seq + 1 ..= seq` that lapses `lease` after it is last written.
    pub fn leased(base_seq: u64, seq: u64, note: &str, lease: Duration) -> PinRecord {
        PinRecord {
            lease_secs: Some(lease.as_secs()),
            ..PinRecord::new(base_seq, seq, note)
        }
    }

    /// Whether a pin whose object is `age` old still holds.
    pub fn holds_at(&self, age: Duration) -> bool {
        self.lease_secs.is_none_or(|l| age < Duration::from_secs(l))
    }
}

fn pin_key(vm: &VmId, name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(StoreError::InvalidArgument(format!(
            "pin name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(format!("vms/{vm}/pins/{name}.json"))
}

impl Store {
    /// Pins a range of a VM's journal under `name` (replacing an older pin of that name).
    pub async fn put_pin(&self, vm: &VmId, name: &str, pin: &PinRecord) -> Result<()> {
        let body =
            serde_json::to_vec(pin).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        self.backend()
            .put(&pin_key(vm, name)?, Bytes::from(body), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// Removes a pin; absent is fine.
    pub async fn delete_pin(&self, vm: &VmId, name: &str) -> Result<()> {
        match self.backend().delete(&pin_key(vm, name)?).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// A VM's pins, by name.
    pub async fn list_pins(&self, vm: &VmId) -> Result<Vec<(String, PinRecord)>> {
        Ok(self
            .pins_with_age(vm, SystemTime::now())
            .await?
            .into_iter()
            .map(|(name, pin, _)| (name, pin))
            .collect())
    }

    /// A VM's pins that hold at `now` (by the backend's clock: pass `SystemTime::now()`),
    /// by name; a lapsed lease is deleted.
    pub async fn live_pins(&self, vm: &VmId, now: SystemTime) -> Result<Vec<(String, PinRecord)>> {
        let mut out = Vec::new();
        for (name, pin, age) in self.pins_with_age(vm, now).await? {
            if pin.holds_at(age) {
                out.push((name, pin));
            } else {
                tracing::info!(%vm, pin = %name, note = %pin.note, "a reader's lease lapsed: pin removed");
                self.delete_pin(vm, &name).await?;
            }
        }
        Ok(out)
    }

    async fn pins_with_age(
        &self,
        vm: &VmId,
        now: SystemTime,
    ) -> Result<Vec<(String, PinRecord, Duration)>> {
        let prefix = format!("vms/{vm}/pins");
        let mut out = Vec::new();
        for o in self.backend().list(&prefix).await? {
            let Some(name) = o
                .key
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let obj = match self.backend().get(&o.key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            let pin = decode_json(&obj, PIN_FORMAT, |p: &PinRecord| (&p.format, p.version))
                .map_err(|p| StoreError::corrupt(&o.key, p))?;
            let age = now
                .duration_since(o.last_modified)
                .unwrap_or(Duration::ZERO);
            out.push((name.to_string(), pin, age));
        }
        Ok(out)
    }
}
