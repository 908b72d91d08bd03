//! Pins (`vms/<vm>/pins/<name>.json`): a reader that holds a recovery point open for a long
//! time — a DR drill's copy boots from it and reads it until cleanup — pins the journal range it
//! reads, so that retention keeps its base point and every record from the base to the pinned
//! position, whatever the policy says and even after the point itself is stored or thinned.
//!
//! Format (JSON, version 1, frozen): `{"format": "lifeboat-pin", "version": 1, "base_seq": B,
//! "seq": S, "note": "..."}` — keep the stored point at position `B` (0: none, the reader needs
//! no base) and the journal records `B + 1 ..= S`.

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
        }
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
            out.push((name.to_string(), pin));
        }
        Ok(out)
    }
}
