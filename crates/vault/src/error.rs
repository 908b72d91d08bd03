//! Vault errors and how the API reports them: a status code and a JSON body with the message
//! and the whole cause chain.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lifeboat_types::Refused;
use serde::Serialize;

/// Errors of the vault. Each message names the object; causes are sources, not repeated.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A database statement failed.
    #[error("vault database: {what}")]
    Db {
        /// What was being done.
        what: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer vault.
    #[error("vault database {path} has schema version {found}, newer than this vault's {known}: run the newer vault, or restore a backup")]
    NewerSchema {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A request body or parameter that cannot be used.
    #[error("{0}")]
    BadRequest(String),
    /// No such object.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The object exists already.
    #[error("{kind} {name:?} already exists")]
    Exists {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An operation that conflicts with how things are (e.g. one VM of a replication group
    /// failed over alone); the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// An operation in the wrong state.
    #[error("VM {vm}: {refused}")]
    WrongState {
        /// The VM.
        vm: String,
        /// Why.
        refused: Refused,
    },
    /// No agent can act for a region now.
    #[error("{0}")]
    NoAgent(String),
    /// An agent refused or failed a request (its message and causes follow).
    #[error("agent {host}: {message}")]
    Agent {
        /// The host.
        host: String,
        /// What it said (with its cause chain).
        message: String,
    },
    /// The region store could not be read.
    #[error("region store of region {region}")]
    Store {
        /// The region.
        region: String,
        /// Why.
        #[source]
        source: Box<lifeboat_store::StoreError>,
    },
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token: send `Authorization: Bearer <token>` with the vault's token")]
    Unauthorized,
    /// A stored value that does not parse (a damaged database).
    #[error("vault database holds a bad {what}: {value:?}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error's message.
    pub error: String,
    /// The message followed by every cause, outermost first.
    pub causes: Vec<String>,
}

impl VaultError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            VaultError::BadRequest(_) => StatusCode::BAD_REQUEST,
            VaultError::NotFound { .. } => StatusCode::NOT_FOUND,
            VaultError::Exists { .. } | VaultError::WrongState { .. } | VaultError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            VaultError::Unauthorized => StatusCode::UNAUTHORIZED,
            VaultError::Store { .. } | VaultError::Agent { .. } => StatusCode::BAD_GATEWAY,
            VaultError::NoAgent(_) => StatusCode::SERVICE_UNAVAILABLE,
            VaultError::Db { .. } | VaultError::NewerSchema { .. } | VaultError::Corrupt { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// The message and every cause of `e`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut src = e.source();
    while let Some(c) = src {
        out.push(c.to_string());
        src = c.source();
    }
    out
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %chain(&self).join(": "), "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            causes: chain(&self),
        };
        (status, axum::Json(body)).into_response()
    }
}
