//! The roles sluice's built-in parts act as, as the seed's Lambda functions act as their
//! execution roles: the upload route (`POST /uploads`, the seed's upload Lambda) as
//! [`UPLOAD_ROUTE_ROLE`], the built-in mapping (the seed's processor) as
//! [`BUILTIN_MAPPING_ROLE`]. Both run in-process, so they do not sign requests; each action
//! is decided by a [`RoleGuard`] on the role's current policies before it is taken.
//!
//! The roles are created at start when missing (an operator's changes to an existing one
//! stand), each with one inline policy of exactly what the part needs, and `sluice info`
//! names them. Taking a permission away (`aws iam delete-role-policy`) stops the part the
//! way a Lambda function's missing permission does: the upload route answers 403 naming
//! the action, the built-in mapping fails the record with the same message.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_iam::guard::RoleGuard;
use sluice_iam::{Iam, IamError};
use sluice_processor::{CallContext, Function, FunctionError};
use sluice_store::{ByteStream, ObjectInfo};
use sluice_uploads::{
    CompletedMultipart, MultipartCompletion, NewUpload, Staged, Upload, UploadError, UploadMeta,
    UploadSink,
};

use crate::config::Settings;

pub(crate) const UPLOAD_ROUTE_ROLE: &str = "sluice-upload-route";
pub(crate) const BUILTIN_MAPPING_ROLE: &str = "sluice-builtin-mapping";
const POLICY_NAME: &str = "least-privilege";
const TRUSTED_SERVICE: &str = "lambda.amazonaws.com";

pub(crate) fn role_arn(settings: &Settings, role: &str) -> String {
    format!("arn:aws:iam::{}:role/{role}", settings.account_id)
}

fn stream_arn(settings: &Settings) -> String {
    format!(
        "arn:aws:kinesis:{}:{}:stream/{}",
        settings.region, settings.account_id, settings.stream
    )
}

/// What the upload route needs: store `uploads/` objects of the upload bucket, put records
/// on the upload stream.
fn upload_route_policy(settings: &Settings) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "StoreUploads",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": format!("arn:aws:s3:::{}/uploads/*", settings.bucket)
            },
            {
                "Sid": "PutUploadRecords",
                "Effect": "Allow",
                "Action": ["kinesis:PutRecord", "kinesis:PutRecords"],
                "Resource": stream_arn(settings)
            }
        ]
    })
    .to_string()
}

/// A statement allowing what a consumer of the stream `arn` needs (the mappings' default
/// policy and the built-in mapping's role share it).
pub(crate) fn read_stream_statement(sid: &str, arn: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": [
            "kinesis:DescribeStream",
            "kinesis:DescribeStreamSummary",
            "kinesis:GetRecords",
            "kinesis:GetShardIterator",
            "kinesis:ListShards"
        ],
        "Resource": arn
    })
}

/// What the built-in mapping needs: read the upload stream, read `uploads/`, write
/// `processed/` (in the processed bucket, or the upload bucket when none is set).
fn builtin_mapping_policy(settings: &Settings) -> String {
    let out = settings
        .processed_bucket
        .clone()
        .unwrap_or_else(|| settings.bucket.clone());
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            read_stream_statement("ReadUploadStream", &stream_arn(settings)),
            {
                "Sid": "ReadUploads",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{}/uploads/*", settings.bucket)
            },
            {
                "Sid": "WriteProcessed",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": format!("arn:aws:s3:::{out}/processed/*")
            }
        ]
    })
    .to_string()
}

/// Creates the built-in parts' roles when missing; returns their guards (upload route,
/// built-in mapping).
pub(crate) async fn ensure(
    iam: &Iam,
    settings: &Settings,
) -> Result<(RoleGuard, RoleGuard), IamError> {
    for (role, description, policy) in [
        (
            UPLOAD_ROUTE_ROLE,
            "What sluice's upload route (POST /uploads) may do",
            upload_route_policy(settings),
        ),
        (
            BUILTIN_MAPPING_ROLE,
            "What sluice's built-in mapping (the upload stream to processed/) may do",
            builtin_mapping_policy(settings),
        ),
    ] {
        let (_, created) = iam
            .ensure_role(role, description, TRUSTED_SERVICE, POLICY_NAME, &policy)
            .await?;
        if created {
            tracing::info!(role, "created the role of a built-in part");
        }
    }
    Ok((
        RoleGuard::new(iam.clone(), UPLOAD_ROUTE_ROLE),
        RoleGuard::new(iam.clone(), BUILTIN_MAPPING_ROLE),
    ))
}

fn upload_error(e: IamError) -> UploadError {
    match e {
        IamError::AccessDenied(m) => UploadError::AccessDenied(m),
        e if e.is_unavailable() => match e {
            IamError::Meta(m) => UploadError::Meta(m),
            other => UploadError::Backend(other.to_string()),
        },
        other => UploadError::Backend(other.to_string()),
    }
}

/// The upload route's sink: each upload is checked against [`UPLOAD_ROUTE_ROLE`]
/// (`s3:PutObject` on the object, `kinesis:PutRecord` on the stream) before it is
/// committed. (Multipart completion belongs to the S3 edge, whose callers' keys decide.)
pub(crate) struct GuardedSink {
    pub(crate) inner: Arc<dyn UploadSink>,
    pub(crate) guard: RoleGuard,
    pub(crate) region: String,
    pub(crate) account_id: String,
}

impl GuardedSink {
    async fn allow(&self, bucket: &str, key: &str, stream: &str) -> Result<(), UploadError> {
        self.guard
            .check("s3:PutObject", &format!("arn:aws:s3:::{bucket}/{key}"))
            .await
            .map_err(upload_error)?;
        self.guard
            .check(
                "kinesis:PutRecord",
                &format!(
                    "arn:aws:kinesis:{}:{}:stream/{stream}",
                    self.region, self.account_id
                ),
            )
            .await
            .map_err(upload_error)
    }
}

#[async_trait]
impl UploadSink for GuardedSink {
    async fn commit(&self, upload: NewUpload) -> Result<Upload, UploadError> {
        self.allow(&upload.bucket, &upload.key, &upload.stream)
            .await?;
        self.inner.commit(upload).await
    }

    async fn stage(&self, body: ByteStream) -> Result<Staged, UploadError> {
        self.inner.stage(body).await
    }

    async fn commit_staged(&self, upload: UploadMeta, body: Staged) -> Result<Upload, UploadError> {
        self.allow(&upload.bucket, &upload.key, &upload.stream)
            .await?;
        self.inner.commit_staged(upload, body).await
    }

    async fn complete_multipart(
        &self,
        completion: MultipartCompletion,
    ) -> Result<CompletedMultipart, UploadError> {
        self.inner.complete_multipart(completion).await
    }
}

/// The built-in mapping's function, checked against [`BUILTIN_MAPPING_ROLE`] before each
/// record: `kinesis:GetRecords` on the stream, `s3:GetObject` on the input, `s3:PutObject`
/// on the output. A denial fails the record (nothing is written).
pub(crate) struct GuardedFunction {
    pub(crate) inner: Arc<dyn Function>,
    pub(crate) guard: RoleGuard,
    pub(crate) stream_arn: String,
    pub(crate) output_bucket: Option<String>,
    pub(crate) output_prefix: String,
}

impl GuardedFunction {
    pub(crate) fn new(
        inner: Arc<dyn Function>,
        guard: RoleGuard,
        settings: &Settings,
        output_prefix: &str,
    ) -> Self {
        GuardedFunction {
            inner,
            guard,
            stream_arn: stream_arn(settings),
            output_bucket: settings.processed_bucket.clone(),
            output_prefix: output_prefix.to_owned(),
        }
    }
}

fn function_error(e: IamError) -> FunctionError {
    match e {
        IamError::AccessDenied(m) => FunctionError::Failed(format!("AccessDenied: {m}")),
        e if e.is_unavailable() => FunctionError::Unavailable(e.to_string()),
        other => FunctionError::Failed(other.to_string()),
    }
}

#[async_trait]
impl Function for GuardedFunction {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn run(
        &self,
        input: ByteStream,
        info: &ObjectInfo,
        ctx: &CallContext,
    ) -> Result<ByteStream, FunctionError> {
        let out_bucket = self.output_bucket.as_deref().unwrap_or(&info.bucket);
        let out_key = self.inner.output_key(&sluice_processor::output_key(
            &info.key,
            &self.output_prefix,
        ));
        for (action, resource) in [
            ("kinesis:GetRecords", self.stream_arn.clone()),
            (
                "s3:GetObject",
                format!("arn:aws:s3:::{}/{}", info.bucket, info.key),
            ),
            (
                "s3:PutObject",
                format!("arn:aws:s3:::{out_bucket}/{out_key}"),
            ),
        ] {
            self.guard
                .check(action, &resource)
                .await
                .map_err(function_error)?;
        }
        self.inner.run(input, info, ctx).await
    }

    fn output_key(&self, key: &str) -> String {
        self.inner.output_key(key)
    }

    fn output_content_type(&self, input: &ObjectInfo) -> String {
        self.inner.output_content_type(input)
    }
}
