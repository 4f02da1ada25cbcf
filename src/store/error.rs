//! The store's one error type, the same for every backend.

/// Errors of the persistence layer. A backend converts its driver's errors
/// into these; nothing above the store sees a driver type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, lock timeout, constraint, connection).
    #[error("database error: {0}")]
    Db(Box<dyn std::error::Error + Send + Sync>),
    /// Applying the backend's migrations failed.
    #[error("migration error: {0}")]
    Migrate(Box<dyn std::error::Error + Send + Sync>),
    /// A batched write (through the backend's event writer) failed.
    #[error("database write failed: {0}")]
    Write(String),
    /// The configuration asks for something the store cannot do.
    #[error("unsupported database: {0}")]
    Unsupported(String),
    /// A stored value could not be decoded (corrupt row or JSON column).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// [`StoreError::Corrupt`] for a stored id that is not a UUID.
    pub fn bad_id(s: &str, e: uuid::Error) -> Self {
        StoreError::Corrupt(format!("bad id {s:?}: {e}"))
    }
}

/// Parses a stored id column.
///
/// Errors: [`StoreError::Corrupt`] when it is not a UUID.
pub fn parse_id(s: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(s).map_err(|e| StoreError::bad_id(s, e))
}

/// Parses an optional JSON text column.
///
/// Errors: [`StoreError::Corrupt`] when it is not JSON.
pub fn parse_json(s: Option<String>) -> Result<Option<serde_json::Value>, StoreError> {
    s.map(|text| serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}"))))
        .transpose()
}
