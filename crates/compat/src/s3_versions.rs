//! S3 versioning at the edge: version ids in requests, delete markers in answers, and
//! ListObjectVersions. The versions themselves are the store's ([`sluice_store::versions`]).

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};
use sluice_store::versions::valid_version_id;
use sluice_store::{ObjectStore, VersionMarker};

/// A request's `versionId`, checked for form: S3 refuses a malformed one with
/// `InvalidArgument` (an id of the right form that names no version is `NoSuchVersion`).
pub(crate) fn version_arg(version_id: Option<&str>) -> S3Result<Option<&str>> {
    match version_id {
        None => Ok(None),
        Some(v) if valid_version_id(v) => Ok(Some(v)),
        Some(_) => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "Invalid version id specified",
        )),
    }
}

/// S3's answer to a GET or HEAD of a version that is a delete marker: 405 with the marker's
/// version id, `x-amz-delete-marker: true` and its time.
pub(crate) fn delete_marker_error(version_id: &str, last_modified_ms: i64) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::MethodNotAllowed,
        "The specified method is not allowed against this resource.",
    );
    e.set_headers(marker_headers(version_id, Some(last_modified_ms)));
    e
}

/// The headers S3 sends about a delete marker that stands in for an object.
fn marker_headers(version_id: &str, last_modified_ms: Option<i64>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-amz-delete-marker",
        http::HeaderValue::from_static("true"),
    );
    if let Ok(v) = http::HeaderValue::from_str(version_id) {
        headers.insert("x-amz-version-id", v);
    }
    if let Some(ms) = last_modified_ms
        && let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        && let Ok(v) =
            http::HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    {
        headers.insert("last-modified", v);
    }
    headers
}

/// A `NoSuchKey` for a key whose latest version is a delete marker carries the marker's
/// headers, as S3 answers; any other error is returned as it is.
pub(crate) async fn mark_if_deleted(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    mut e: S3Error,
) -> S3Error {
    if *e.code() != S3ErrorCode::NoSuchKey {
        return e;
    }
    if let Ok(entries) = store.list_versions(bucket, key, None, 1).await
        && let Some(latest) = entries.first()
        && latest.info.key == key
        && latest.delete_marker
    {
        let id = latest.info.version_id.as_deref().unwrap_or("null");
        e.set_headers(marker_headers(id, None));
    }
    e
}

/// The status PutBucketVersioning sets: `Enabled` or `Suspended` (a bucket cannot go back
/// to never versioned). MFA delete needs MFA devices, which sluice does not have: asking
/// to enable it is refused.
pub(crate) fn requested_status(config: &VersioningConfiguration) -> S3Result<&'static str> {
    if config
        .mfa_delete
        .as_ref()
        .is_some_and(|m| m.as_str() == MFADelete::ENABLED)
    {
        return Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "MFA delete is not supported: sluice has no MFA devices",
        ));
    }
    match config.status.as_ref().map(|s| s.as_str()) {
        Some(BucketVersioningStatus::ENABLED) => Ok("Enabled"),
        Some(BucketVersioningStatus::SUSPENDED) => Ok("Suspended"),
        _ => Err(S3Error::with_message(
            S3ErrorCode::MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema",
        )),
    }
}

/// One page of ListObjectVersions.
#[derive(Default)]
pub(crate) struct VersionsPage {
    pub versions: Vec<ObjectVersion>,
    pub markers: Vec<DeleteMarkerEntry>,
    pub prefixes: Vec<CommonPrefix>,
    /// Where the next page starts, when there is one: NextKeyMarker, NextVersionIdMarker.
    pub next: Option<(String, Option<String>)>,
    pub max_keys: i32,
}

/// Lists versions and delete markers of the keys under `prefix` after the markers, with
/// keys that share a delimited part after the prefix folded into common prefixes (a common
/// prefix counts once against `max-keys`, as a key's version does).
pub(crate) async fn list_page(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    key_marker: Option<&str>,
    version_id_marker: Option<&str>,
    max_keys: Option<i32>,
) -> S3Result<VersionsPage> {
    let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000);
    let want = max_keys as usize;
    let mut page = VersionsPage {
        max_keys,
        ..Default::default()
    };
    // A version-id marker without a key marker is refused, as S3 refuses it.
    if version_id_marker.is_some() && key_marker.is_none_or(str::is_empty) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "A version-id marker cannot be specified without a key marker.",
        ));
    }
    let version_id_marker = version_arg(version_id_marker.filter(|v| !v.is_empty()))?;
    let mut cursor = key_marker.filter(|k| !k.is_empty()).map(|k| VersionMarker {
        key: k.to_owned(),
        version_id: version_id_marker.map(str::to_owned),
        position: None,
    });
    let mut last: Option<(String, Option<String>)> = None;
    let mut taken = 0usize;
    'pages: loop {
        let batch = store
            .list_versions(bucket, prefix, cursor.clone(), 1000)
            .await
            .map_err(crate::s3::s3_err)?;
        if batch.is_empty() {
            break;
        }
        for entry in batch {
            let key = entry.info.key.clone();
            let version = entry
                .info
                .version_id
                .clone()
                .unwrap_or_else(|| "null".into());
            let folded = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_owned())
            });
            if taken == want {
                page.next = last.clone();
                break 'pages;
            }
            taken += 1;
            match folded {
                Some(cp) => {
                    // Skip every version of every key under this common prefix.
                    cursor = Some(VersionMarker {
                        key: format!("{cp}\u{10FFFF}"),
                        version_id: None,
                        position: None,
                    });
                    last = Some((cp.clone(), None));
                    page.prefixes.push(CommonPrefix { prefix: Some(cp) });
                    continue 'pages;
                }
                None => {
                    cursor = Some(VersionMarker {
                        key: key.clone(),
                        version_id: Some(version.clone()),
                        position: Some(entry.position),
                    });
                    last = Some((key.clone(), Some(version.clone())));
                    let info = &entry.info;
                    if entry.delete_marker {
                        page.markers.push(DeleteMarkerEntry {
                            key: Some(key),
                            version_id: Some(version),
                            is_latest: Some(entry.is_latest),
                            last_modified: Some(crate::s3::timestamp(info.last_modified_ms)),
                            owner: Some(crate::s3::owner()),
                        });
                    } else {
                        page.versions.push(ObjectVersion {
                            key: Some(key),
                            version_id: Some(version),
                            is_latest: Some(entry.is_latest),
                            last_modified: Some(crate::s3::timestamp(info.last_modified_ms)),
                            e_tag: Some(crate::s3::etag(&info.etag)),
                            size: Some(info.size as i64),
                            storage_class: Some(ObjectVersionStorageClass::from(
                                info.headers
                                    .storage_class
                                    .clone()
                                    .unwrap_or_else(|| "STANDARD".into()),
                            )),
                            owner: Some(crate::s3::owner()),
                            checksum_algorithm: info
                                .headers
                                .checksum
                                .as_ref()
                                .map(|(a, _)| vec![ChecksumAlgorithm::from(a.clone())]),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    Ok(page)
}
