//! Processing functions: bytes of an object in, bytes of the output out.

use async_trait::async_trait;
use bytes::Bytes;
use sluice_store::ObjectInfo;

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{0}")]
    Failed(String),
}

#[async_trait]
pub trait Function: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn call(&self, input: Bytes, info: &ObjectInfo) -> Result<Bytes, FunctionError>;
}

/// The seed's processing: UTF-8 text upper-cased with Unicode's full case mapping
/// (`ß` → `SS`). Input that is not UTF-8 fails.
pub struct Uppercase;

#[async_trait]
impl Function for Uppercase {
    fn name(&self) -> &str {
        "uppercase"
    }

    async fn call(&self, input: Bytes, _info: &ObjectInfo) -> Result<Bytes, FunctionError> {
        let text = std::str::from_utf8(&input).map_err(|e| {
            FunctionError::Failed(format!(
                "content is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        Ok(Bytes::from(text.to_uppercase()))
    }
}

/// Looks a built-in function up by name.
pub fn builtin(name: &str) -> Option<std::sync::Arc<dyn Function>> {
    match name {
        "uppercase" => Some(std::sync::Arc::new(Uppercase)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ObjectInfo {
        ObjectInfo {
            bucket: "b".into(),
            key: "k".into(),
            size: 0,
            etag: String::new(),
            sha256: String::new(),
            content_type: "text/plain".into(),
            last_modified_ms: 0,
            owner: None,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn uppercase_is_unicode_aware() {
        let out = Uppercase
            .call(Bytes::from("hello kinesis, straße é"), &info())
            .await
            .expect("utf-8");
        assert_eq!(out, Bytes::from("HELLO KINESIS, STRASSE É"));
        assert!(
            Uppercase
                .call(Bytes::from_static(&[0xff, 0xfe]), &info())
                .await
                .is_err()
        );
    }
}
