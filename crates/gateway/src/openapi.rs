//! The upload API's OpenAPI 3.1 description, served at `/openapi.json`.
//!
//! The schemas are derived (`utoipa::ToSchema`) from the very types the handlers serialize
//! their answers with ([`UploadAccepted`], [`UploadView`], [`ErrorBody`], [`Health`]) and
//! the JSON body they parse ([`UploadBody`]), so a field cannot change without the document
//! changing with it. The operations (paths, parameters, media types, statuses) are built
//! here; `tests::every_route_is_described` holds them to the router, and the black-box test
//! `openapi_describes_what_the_server_answers` has schemathesis send generated requests and
//! check every answer against this document.

use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, Required, ResponseBuilder, Type,
};
use utoipa::{PartialSchema, ToSchema};

/// The seed's JSON upload body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadBody {
    /// File name (defaults to `file-<ms>.txt`); rules as for every upload name.
    pub(crate) filename: Option<String>,
    /// The file's text (defaults to `"empty"`).
    pub(crate) content: Option<String>,
}

/// Where an object is.
#[derive(Serialize, ToSchema)]
pub(crate) struct S3Location {
    pub(crate) bucket: String,
    pub(crate) key: String,
}

/// The answer to an accepted upload: object, stream record and status row are durable.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadAccepted {
    /// `Uploaded and queued for processing`.
    pub(crate) message: String,
    pub(crate) s3: S3Location,
    pub(crate) upload_id: String,
    /// Also in `x-request-id` and in the stream record.
    pub(crate) request_id: String,
}

/// Where an upload is in the pipeline.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Queued,
    Processing,
    Processed,
    Failed,
}

/// An upload and what became of it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadView {
    pub(crate) upload_id: String,
    pub(crate) status: Status,
    pub(crate) s3: S3Location,
    pub(crate) filename: String,
    pub(crate) size: u64,
    /// SHA-256 of the bytes, hex.
    pub(crate) sha256: String,
    pub(crate) content_type: String,
    pub(crate) request_id: String,
    pub(crate) stream: String,
    pub(crate) shard_id: String,
    pub(crate) sequence_number: String,
    /// How many times a processor started on it.
    pub(crate) attempts: u32,
    /// Why processing failed (`failed` only).
    pub(crate) error: Option<String>,
    /// The processed object (`processed` only).
    pub(crate) processed: Option<S3Location>,
    /// RFC 3339, milliseconds, UTC.
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) processed_at: Option<String>,
}

/// Every error: a stable code and a message for people. A refused token adds
/// `error_description` (API Gateway's `{"message":"Unauthorized"}` plus the reason).
/// A page of the user's uploads, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct UploadPage {
    pub(crate) uploads: Vec<UploadView>,
    /// Pass as `next` for the following page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) message: String,
    /// `invalid_token`, `bad_request`, `not_found`, `payload_too_large`, …
    pub(crate) error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`
    pub(crate) status: String,
}

/// The document (built once per call; the router caches its JSON).
pub(crate) fn document() -> OpenApi {
    let json = |schema: utoipa::openapi::RefOr<utoipa::openapi::Schema>| {
        ContentBuilder::new().schema(Some(schema)).build()
    };
    let schema_ref = |name: &str| Ref::from_schema_name(name);
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", json(schema_ref("ErrorBody").into()))
            .build()
    };
    let binary = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .build()
    };
    let id_param = || {
        ParameterBuilder::new()
            .name("id")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("The upload id `POST /uploads` answered with"))
            .schema(Some(String::schema()))
            .build()
    };
    // Statuses every authenticated operation may answer besides its own.
    let common = |op: OperationBuilder| {
        op.security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .response(
                "401",
                error(
                    "Missing or invalid token (`WWW-Authenticate: Bearer error=\"invalid_token\"`)",
                ),
            )
            .response(
                "400",
                error("More than one Authorization header, or a bad request"),
            )
            .response(
                "500",
                error("An internal error (details in the server log)"),
            )
            .response("503", error("An engine is unavailable (`Retry-After: 1`)"))
    };
    let download =
        |summary: &str, id: &str| {
            common(
            OperationBuilder::new()
                .operation_id(Some(id))
                .summary(Some(summary))
                .parameter(id_param())
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description(
                            "The bytes, as a download (`Content-Disposition: attachment`), with \
                             the content type they were stored with",
                        )
                        .content("*/*", json(binary().into()))
                        .build(),
                )
                .response("404", error("No such upload of this user, or no result yet"))
                .response("410", error("The object was deleted or replaced since")),
        )
        .build()
        };

    let create = common(
        OperationBuilder::new()
            .operation_id(Some("createUpload"))
            .summary(Some(
                "Upload a file; it is stored, put on the stream and processed",
            ))
            .parameter(
                ParameterBuilder::new()
                    .name("filename")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(
                        "The file name of a raw (`application/octet-stream`) body",
                    ))
                    .schema(Some(String::schema()))
                    .build(),
            )
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content("application/json", json(schema_ref("UploadBody").into()))
                    .content("application/octet-stream", json(binary().into()))
                    .content(
                        "multipart/form-data",
                        json(
                            ObjectBuilder::new()
                                .property("file", binary())
                                .required("file")
                                .property("filename", String::schema())
                                .into(),
                        ),
                    )
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Stored, on the stream and queued: durable")
                    .content(
                        "application/json",
                        json(schema_ref("UploadAccepted").into()),
                    )
                    .build(),
            )
            .response("409", error("The key holds another user's upload"))
            .response("413", error("The body is over the limit"))
            .response("415", error("Another media type"))
            .response(
                "429",
                error("Over the user's upload rate or daily bytes (`Retry-After`)"),
            )
            .response(
                "507",
                error("Over the user's storage limit, or the disk is full"),
            ),
    )
    .build();
    let status = common(
        OperationBuilder::new()
            .operation_id(Some("getUpload"))
            .summary(Some("An upload's status"))
            .parameter(id_param())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The upload")
                    .content("application/json", json(schema_ref("UploadView").into()))
                    .build(),
            )
            .response("404", error("No such upload of this user")),
    )
    .build();
    let query = |name: &str, description: &str, schema| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(schema))
            .build()
    };
    let list = common(
        OperationBuilder::new()
            .operation_id(Some("listUploads"))
            .summary(Some("The caller's uploads, newest first"))
            .parameter(query(
                "limit",
                "Uploads per page, 1 to 100 (default 20)",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(crate::live::MAX_PAGE as i32))
                    .into(),
            ))
            .parameter(query(
                "next",
                "The `next` token of the previous page",
                String::schema(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("A page of uploads")
                    .content("application/json", json(schema_ref("UploadPage").into()))
                    .build(),
            ),
    )
    .build();
    let events = common(
        OperationBuilder::new()
            .operation_id(Some("uploadEvents"))
            .summary(Some(
                "Server-sent events: every change of the caller's uploads, as it happens",
            ))
            .description(Some(
                "`event: ready` once the stream is live, then `event: upload` with the upload's \
                 whole row (the JSON of `GET /uploads/{id}`) each time it changes; `id:` is the \
                 time to resume from (`Last-Event-ID`). Events may repeat after a reconnect; \
                 none is missed. The stream ends with `event: unauthorized` when the token \
                 expires or is revoked, and with `event: error` when an engine fails.",
            ))
            .parameter(query(
                "since",
                "Send the uploads changed since this time (milliseconds since the epoch; default now)",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .into(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The event stream (never ends by itself)")
                    .content("text/event-stream", json(String::schema()))
                    .build(),
            )
            .response(
                "429",
                error("The caller already holds the most live streams a user may"),
            ),
    )
    .build();
    let health = OperationBuilder::new()
        .operation_id(Some("healthz"))
        .summary(Some("Alive"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The server is serving")
                .content("application/json", json(schema_ref("Health").into()))
                .build(),
        )
        .build();

    let paths = PathsBuilder::new()
        .path("/uploads", PathItem::new(HttpMethod::Post, create))
        .path("/uploads", PathItem::new(HttpMethod::Get, list))
        .path("/uploads/events", PathItem::new(HttpMethod::Get, events))
        .path("/uploads/{id}", PathItem::new(HttpMethod::Get, status))
        .path(
            "/uploads/{id}/content",
            PathItem::new(
                HttpMethod::Get,
                download("The uploaded bytes", "getUploadContent"),
            ),
        )
        .path(
            "/uploads/{id}/processed",
            PathItem::new(
                HttpMethod::Get,
                download("The processed result's bytes", "getUploadProcessed"),
            ),
        )
        .path("/healthz", PathItem::new(HttpMethod::Get, health));
    let components = ComponentsBuilder::new()
        .schema_from::<UploadBody>()
        .schema_from::<S3Location>()
        .schema_from::<UploadAccepted>()
        .schema_from::<Status>()
        .schema_from::<UploadView>()
        .schema_from::<UploadPage>()
        .schema_from::<ErrorBody>()
        .schema_from::<Health>()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("sluice upload API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The seed's API Gateway route, for real: upload with the user pool's ID token \
                     as a Bearer token, then follow the upload through the stream and its processor.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

#[cfg(test)]
mod tests {
    use super::document;

    #[test]
    fn every_route_is_described() {
        let doc = serde_json::to_value(document()).expect("json");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        for (path, method) in [
            ("/uploads", "post"),
            ("/uploads", "get"),
            ("/uploads/events", "get"),
            ("/uploads/{id}", "get"),
            ("/uploads/{id}/content", "get"),
            ("/uploads/{id}/processed", "get"),
            ("/healthz", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{path} {method}");
        }
        // The router serves exactly these routes (and /openapi.json itself).
        let served = crate::ROUTES
            .iter()
            .filter(|r| **r != "/openapi.json")
            .count();
        assert_eq!(
            doc["paths"].as_object().map(|p| p.len()),
            Some(served),
            "a route of the router is not described, or one described is not served"
        );
        let view = &doc["components"]["schemas"]["UploadView"]["properties"];
        for field in ["uploadId", "status", "s3", "sha256", "processedAt"] {
            assert!(view[field].is_object(), "{field}: {view}");
        }
    }
}
