//! `sluice serve`: every part on embedded backends, in one process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_gateway::GatewayConfig;
use sluice_identity::Identity;
use sluice_processor::Processor;
use sluice_processor::embedded::EmbeddedCheckpoints;
use sluice_processor::mappings::builtin_config;
use sluice_store::ObjectStore;
use sluice_store::embedded::EmbeddedStore;
use sluice_stream::Stream;
use sluice_stream::embedded::EmbeddedStream;
use sluice_uploads::LedgerObserver;
use sluice_uploads::embedded::EmbeddedUploads;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::wiring::{self, RunInfo};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const TOKEN_LEEWAY_SECS: i64 = 60;

/// An unfinished upload whose record the status mapping passed this long ago is requeued.
const LOST_AFTER: Duration = Duration::from_secs(60);
/// How often a gateway delivers the stream records of uploads whose delivery failed (and
/// how old such an entry must be: younger ones are still on their way).
const REDELIVER_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn serve(settings: Settings) -> Result<()> {
    // Created 0700, or checked: refused if others could write it, made private if they
    // could read it (see `datadir`).
    crate::datadir::prepare(&settings.data_dir)?;
    // One server per data directory: the lock is held for the life of the process and
    // released by the kernel however it ends.
    let lock_path = settings.data_dir.join("serve.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another `sluice serve` is using the data directory {}",
            settings.data_dir.display()
        );
    }

    // Both listeners at their caps must fit in the process's open-file limit.
    crate::http_server::fit_open_file_limit(settings.conn_limits.max_connections.saturating_mul(2));
    let api_listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (API)", settings.listen))?;
    let roles = settings.roles;
    // Without the edge role there is no edge listener; the edge URL (the token issuer's
    // base) is still the configured one, which every process of a deployment shares.
    let edge_listener = if roles.edge {
        Some(
            TcpListener::bind(settings.edge_listen)
                .await
                .with_context(|| format!("cannot listen on {} (edge)", settings.edge_listen))?,
        )
    } else {
        None
    };
    let api_url = settings.api_url_for(api_listener.local_addr()?);
    let edge_url = match &edge_listener {
        Some(l) => settings.edge_url_for(l.local_addr()?),
        None => settings.edge_url_for(settings.edge_listen),
    };

    // Before the engines open, so that their start-up work is counted too.
    let metrics = if settings.metrics {
        Some(crate::telemetry::install()?)
    } else {
        tracing::info!(
            "metrics off (metrics = false): /metrics answers 404, the console has no charts"
        );
        None
    };
    let history = crate::history::History::start(metrics.clone());
    let db = wiring::open_db(&settings)?;

    let mut identity = Identity::new(db.clone(), &settings.key_dir(), &edge_url);
    identity.set_rate_limits(settings.rate_limits);
    if let (Some(url), Some(from)) = (&settings.smtp_url, &settings.smtp_from) {
        let smtp = sluice_identity::SmtpSettings {
            url: url.clone(),
            from: from.clone(),
        };
        identity
            .start_mail(&smtp)
            .await
            .context("cannot set up email delivery")?;
    }
    let pool = {
        let (id, region, lifetimes) = (
            identity.clone(),
            settings.region.clone(),
            settings.lifetimes,
        );
        tokio::task::spawn_blocking(move || id.bootstrap_rows(&region, lifetimes)).await??
    };
    // A new pool's signing key is generated off the path to the first answer; signing and
    // verifying wait for it (`Identity::signing_key`), so no token is signed by a key that
    // is not yet on disk.
    {
        let (id, pool_id) = (identity.clone(), pool.pool_id.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = id.signing_key(&pool_id) {
                tracing::error!(error = %e, pool = %pool_id, "cannot load or generate the pool's signing key; sign-ins will try again");
            }
        });
    }
    let verifier =
        sluice_identity::PoolVerifier::new(identity.clone(), &pool.pool_id, TOKEN_LEEWAY_SECS)?;

    let blobs = sluice_blobs::open(&settings.store).with_context(|| {
        format!(
            "cannot open the object store {}",
            crate::wiring::shown_url(&settings.store)
        )
    })?;
    let shared_blobs = settings.store.starts_with("s3://");
    let readiness = crate::telemetry::Readiness {
        meta: db.clone(),
        blobs: blobs.clone(),
    };
    let store = EmbeddedStore::new(db.clone(), blobs);
    if shared_blobs {
        // A shared store (S3) may hold blobs other processes are writing: only those
        // unreferenced for an hour go, in the background.
        let sweep = store.clone();
        tokio::spawn(async move {
            if let Err(e) = sweep.sweep(Duration::from_secs(3600)).await {
                tracing::warn!(error = %e, "cannot sweep unreferenced blobs");
            }
        });
    } else {
        // Files: nothing is in flight before serving starts (the data directory is locked),
        // so every unreferenced blob is a leftover.
        store.sweep(Duration::ZERO).await?;
    }
    store.ensure_bucket(&settings.bucket).await?;
    if let Some(b) = &settings.processed_bucket {
        store.ensure_bucket(b).await?;
    }
    let records = sluice_stream::open_records(&settings.records, &settings.stream_log_dir())
        .await
        .with_context(|| {
            format!(
                "cannot open the record engine {}",
                crate::wiring::shown_url(&settings.records)
            )
        })?;
    let stream = EmbeddedStream::open_on(
        db.clone(),
        records,
        sluice_stream::embedded::StreamOptions {
            throttle: settings.stream_throttle,
            ..Default::default()
        },
    )
    .await?;
    stream
        .ensure_stream(&settings.stream, settings.shards)
        .await?;
    // Background work over the whole deployment runs in processor processes (each pass
    // is safe to run in several at once: retention and lifecycle rules delete what is
    // past its time, requeueing a lost upload twice delivers it twice, at least once).
    let retention = roles
        .processor
        .then(|| stream.spawn_retention(Duration::from_secs(60)));
    // The buckets' S3 lifecycle rules, at start and then every `lifecycle_interval_secs`.
    if roles.processor {
        let store: Arc<dyn sluice_store::ObjectStore> = Arc::new(store.clone());
        let every = Duration::from_secs(settings.lifecycle_interval_secs);
        tokio::spawn(async move {
            loop {
                match sluice_compat::s3_lifecycle::sweep(store.as_ref(), sluice_meta::now_ms())
                    .await
                {
                    Ok(s) if s != Default::default() => tracing::info!(
                        expired_objects = s.expired_objects,
                        aborted_uploads = s.aborted_uploads,
                        "applied the buckets' lifecycle rules"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot apply the buckets' lifecycle rules")
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    let uploads = EmbeddedUploads::new(db.clone(), store.clone(), stream.unthrottled());
    // Uploads committed before a crash cut their delivery short get their records now
    // (by any process that takes uploads; with several, an entry another process is
    // delivering at this moment is delivered once: the record engine knows its ticket),
    // and, while serving, those whose delivery failed (an engine down, a crashed gateway
    // of the same deployment) every few seconds.
    let delivered = if roles.gateway || roles.edge {
        let n = uploads.deliver_pending(None).await?;
        uploads.redeliver_every(REDELIVER_EVERY);
        n
    } else {
        0
    };
    if delivered > 0 {
        tracing::info!(
            uploads = delivered,
            "delivered the stream records of earlier uploads"
        );
    }
    // Defence in depth: a checkpoint never passes a record whose outcome is not recorded,
    // but an upload whose outcome was lost anyway (a bug, a hand-edited database) is put
    // into the stream again, at start and every minute after.
    if roles.processor {
        let (uploads, checkpoints) = (
            uploads.clone(),
            sluice_processor::embedded::EmbeddedCheckpoints::new(db.clone()),
        );
        tokio::spawn(async move {
            loop {
                let before = sluice_meta::now_ms() - LOST_AFTER.as_millis() as i64;
                let passed = |u: sluice_uploads::Upload| {
                    let checkpoints = checkpoints.clone();
                    async move {
                        matches!(
                            sluice_uploads::embedded::tracking_checkpoint(&checkpoints, &u).await,
                            Ok(Some((_, true)))
                        )
                    }
                };
                if let Err(e) = uploads.requeue_lost(before, passed).await {
                    tracing::warn!(error = %e, "cannot look for uploads whose outcome was lost");
                }
                tokio::time::sleep(LOST_AFTER).await;
            }
        });
    }
    let ledger: Arc<dyn sluice_uploads::UploadLedger> = Arc::new(uploads.clone());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let function_logs = sluice_processor::logs::BufferedLogs::start(
        sluice_processor::logs::EmbeddedLogs::new(db.clone()),
    );
    let (keys, new_key) = {
        let (settings, db) = (settings.clone(), db.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let keys = wiring::open_access_keys(&settings, db)?;
            let new_key = keys.ensure_initial()?;
            Ok((keys, new_key))
        })
        .await??
    };
    // IAM: users' keys are allowed what their users' policies allow.
    let iam = sluice_iam::Iam::new(db.clone(), &settings.account_id, keys.clone());
    keys.attach_users(Arc::new(iam.clone()));
    // The roles the upload route and the built-in mapping act as (created when missing).
    let (route_guard, mapping_guard) = crate::builtin_roles::ensure(&iam, &settings)
        .await
        .context("cannot create the built-in parts' IAM roles")?;
    // Functions created with Lambda's API; mappings may run them (`function:<name>`).
    crate::functions_server::retire_legacy_keys(&keys).await;
    let functions = crate::functions_server::start(
        &settings,
        &db,
        &store,
        &iam,
        &edge_url,
        Arc::new(function_logs.clone()),
        shutdown_rx.clone(),
    )
    .await?;
    // Cognito's Lambda triggers run on the same functions.
    identity.set_trigger_runner(Arc::new(crate::functions_server::FunctionTriggers(
        functions.invoker.clone(),
    )));
    // Federation with external OpenID Connect providers makes its requests through this.
    identity.set_federation_http(Arc::new(wiring::FederationClient::new()?));
    let observer = Arc::new(LedgerObserver(ledger.clone()));
    // On engines several processes can share, processors share the mappings' shards
    // through leases in the metadata engine (one holder per shard at a time).
    let leases = if roles.processor && settings.shared_engines() {
        Some(sluice_processor::leases::ShardLeases::new(
            db.clone(),
            wiring::instance_id(&settings)?,
            settings.lease_duration,
        ))
    } else {
        None
    };
    let mut checkpoints = EmbeddedCheckpoints::new(db.clone());
    if let Some(l) = &leases {
        checkpoints = checkpoints.with_leases(l.clone());
        tracing::info!(owner = %l.owner(), duration = ?l.duration(), "processors share shards through leases in the metadata engine");
    }
    let mut processor = Processor::new(
        Arc::new(stream.unthrottled()),
        Arc::new(store.clone()),
        Arc::new(checkpoints),
        observer.clone(),
    )
    .with_logs(Arc::new(function_logs.clone()))
    .with_functions(Arc::new(sluice_functions::invoke::Resolver(
        functions.invoker.clone(),
    )))
    .with_aws_identity(sluice_processor::AwsIdentity {
        region: settings.region.clone(),
        account_id: settings.account_id.clone(),
    });
    if let Some(l) = &leases {
        processor = processor.with_leases(l.clone());
    }
    // Upload status follows exactly one mapping: the built-in one, or (when it is off) the
    // oldest enabled user mapping on the upload stream.
    let workers = if !roles.processor {
        Vec::new()
    } else if settings.builtin_mapping {
        let config = builtin_config(
            &settings.stream,
            settings.batch_size,
            settings.max_attempts,
            settings.processed_bucket.clone(),
        );
        let function = Arc::new(crate::builtin_roles::GuardedFunction::new(
            Arc::new(sluice_processor::functions::Uppercase),
            mapping_guard,
            &settings,
            &config.output_prefix,
        ));
        processor
            .start(config, function, shutdown_rx.clone())
            .await?
    } else {
        tracing::info!(stream = %settings.stream, "built-in mapping off; the oldest enabled mapping on the upload stream tracks upload status");
        processor = processor.with_status_tracking(settings.stream.clone(), observer);
        Vec::new()
    };

    // Tokens revoked after they were issued are refused at the API within a second.
    let revocations = sluice_identity::revocations::Revocations::new(db.clone());
    revocations.watch().await?;
    let console_config = sluice_console::ConsoleConfig {
        region: settings.region.clone(),
        user_pool_id: pool.pool_id.clone(),
        client_id: pool.client_id.clone(),
        edge_url: settings.edge_url.clone(),
        edge_port: match &edge_listener {
            Some(l) => l.local_addr()?.port(),
            None => settings.edge_listen.port(),
        },
        bucket: settings.bucket.clone(),
        stream: settings.stream.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let tokens = crate::wiring::api_tokens(&settings, Arc::new(verifier), TOKEN_LEEWAY_SECS)
        .await
        .context("cannot set up the external token issuers")?;
    let authorizer: Arc<dyn sluice_gateway::Authorizer> =
        Arc::new(sluice_gateway::RevokingAuthorizer::new(
            Arc::new(sluice_gateway::CachingAuthorizer::new(
                tokens,
                TOKEN_LEEWAY_SECS,
            )),
            revocations,
        ));
    let admin = crate::admin_api::router(crate::admin_api::AdminApi {
        authorizer: authorizer.clone(),
        uploads: uploads.clone(),
        stream: stream.unthrottled(),
        identity: identity.clone(),
        pool_id: pool.pool_id.clone(),
        settings: Arc::new(settings.clone()),
        db: db.clone(),
        history,
        keys: keys.clone(),
    });
    // HTTP APIs (`aws apigatewayv2 …`), served on this listener under /_aws/execute-api.
    let http_apis = sluice_apis::HttpApis::new(db.clone(), &settings.region, &api_url);
    let serving = Arc::new(sluice_apis::serve::Serving::new(
        http_apis.clone(),
        functions.invoker.clone(),
        identity.clone(),
        &settings.account_id,
        TOKEN_LEEWAY_SECS,
    ));
    let gateway = sluice_gateway::router(
        GatewayConfig {
            authorizer,
            sink: Arc::new(crate::builtin_roles::GuardedSink {
                inner: Arc::new(uploads.clone()),
                guard: route_guard,
                region: settings.region.clone(),
                account_id: settings.account_id.clone(),
            }),
            ledger,
            store: Arc::new(store.clone()),
            bucket: settings.bucket.clone(),
            stream: settings.stream.clone(),
            max_body_bytes: settings.max_body_bytes,
            max_upload_bytes: settings.max_upload_bytes,
            quota: sluice_gateway::quota::Quota::new(settings.user_limits),
            shutdown: shutdown_rx.clone(),
        }
        .into(),
    )
    .merge(sluice_console::router(console_config))
    .merge(sluice_apis::serve::router(serving))
    .merge(admin);
    // Every process answers health, readiness and metrics on --listen; the rest of that
    // listener is the gateway's.
    let api = if roles.gateway {
        gateway
    } else {
        sluice_gateway::health_router()
    }
    .merge(crate::telemetry::routes(metrics, readiness))
    // Accounted for; and an error answer to a request that announced its body with
    // `Expect: 100-continue` closes the connection, as on the edge
    // (`sluice_compat::close_after_refused_expect`).
    .layer(crate::telemetry::Tracked::new("api").closing_after_refused_expect());
    if let Some(k) = &new_key {
        // Its secret is kept where it can be found again, never in a log.
        wiring::write_credentials(&settings, k, &edge_url).with_context(|| {
            format!(
                "the development key {} was created but its credentials could not be saved; delete it with `sluice keys delete {}` and make one with `sluice keys create`",
                k.id, k.id
            )
        })?;
    }
    let keys_for_mappings = keys.clone();
    let edge = sluice_compat::router(sluice_compat::Edge {
        identity: identity.clone(),
        keys,
        kinesis: sluice_compat::KinesisContext {
            stream: Arc::new(stream.clone()),
            region: settings.region.clone(),
            account_id: settings.account_id.clone(),
            subscriptions: Default::default(),
            settings: Default::default(),
            foreign_region: None,
        },
        s3: sluice_compat::s3::S3Adapter {
            store: Arc::new(store.clone()),
            region: settings.region.clone(),
            max_object_bytes: settings.s3_max_object_bytes,
            uploads: settings
                .s3_uploads_enqueue
                .then(|| sluice_compat::s3::UploadHook {
                    sink: Arc::new(uploads.clone()),
                    bucket: settings.bucket.clone(),
                    stream: settings.stream.clone(),
                }),
            notifications: Some(sluice_compat::s3::NotificationsHook {
                store: Arc::new(store.clone()),
                functions: functions.invoker.functions().clone(),
            }),
            policies: Some(Arc::new(sluice_compat::s3_policy::BucketPolicies::new(
                Arc::new(store.clone()),
            ))),
            cors: Default::default(),
            regions: Default::default(),
            locks: Default::default(),
            encryptions: Default::default(),
        },
        s3_base_domain: settings.s3_base_domain.clone(),
        sign_in_sources: Arc::new(sluice_compat::source_throttle::SourceThrottle::new(
            settings.failed_sign_ins_per_address,
        )),
        address_rates: Arc::default(),
        lambda: Some(sluice_compat::lambda::LambdaApi {
            invoker: functions.invoker.clone(),
            mappings: Arc::new(sluice_processor::embedded::EmbeddedMappings::new(
                db.clone(),
            )),
            stats: sluice_processor::embedded::EmbeddedStats::new(db.clone()),
            defaults: settings.mapping_defaults(),
            body_budget: Arc::default(),
        }),
        apigw: Some(sluice_compat::apigw::ApigwApi {
            apis: http_apis,
            invoker: functions.invoker.clone(),
        }),
        iam: Some(sluice_compat::iam::IamApi { iam }),
    })
    .map_err(anyhow::Error::msg)?
    .layer(crate::telemetry::Tracked::new("edge"));

    // User mappings (`sluice mapping …`, `[[mapping]]`); after the first-start key above.
    let mappings = if roles.processor {
        Some(
            crate::mapping_server::start(
                &settings,
                &db,
                &processor,
                function_logs,
                &keys_for_mappings,
                &edge_url,
                shutdown_rx.clone(),
            )
            .await?,
        )
    } else {
        None
    };

    let info = wiring::make_info(
        &settings,
        &identity,
        pool,
        api_url.clone(),
        edge_url.clone(),
    );
    let run = RunInfo {
        pid: std::process::id(),
        api_url,
        edge_url,
    };
    write_run_file(&settings, &run)?;

    // The banner is for a terminal: a server whose stdout is gone (closed pipe) serves anyway.
    {
        use std::io::{IsTerminal as _, Write as _};
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "sluice is ready\n{}", wiring::describe(&info));
        let _ = writeln!(out, "Data dir:      {}", settings.data_dir.display());
        if roles != crate::config::Roles::ALL {
            let _ = writeln!(out, "Roles:         {}", roles.describe());
        }
        let _ = writeln!(
            out,
            "{}",
            access_key_banner(
                new_key.as_ref(),
                &settings.credentials_file(),
                std::io::stdout().is_terminal()
            )
        );
    }
    tracing::info!(api = %run.api_url, edge = %run.edge_url, pool = %info.pool_id, roles = %roles.describe(), "serving");

    // Both listeners enforce the connection bounds (`http_server`); SIGTERM/SIGINT closes
    // them, lets in-flight requests finish within `shutdown_timeout`, then cuts the rest.
    let limits = settings.conn_limits;
    let api_server = tokio::spawn(crate::http_server::serve(
        api_listener,
        "api",
        api,
        limits,
        false,
        shutdown_rx.clone(),
    ));
    // Small request/response exchanges on keep-alive connections: no Nagle delay.
    let edge_server = edge_listener.map(|l| {
        tokio::spawn(crate::http_server::serve(
            l,
            "edge",
            edge,
            limits,
            true,
            shutdown_rx.clone(),
        ))
    });

    wait_for_signal().await;
    tracing::info!(bound = ?limits.shutdown_timeout, "shutting down");
    let _ = shutdown_tx.send(true);
    for (name, server) in [("api", Some(api_server)), ("edge", edge_server)]
        .into_iter()
        .filter_map(|(n, s)| Some((n, s?)))
    {
        match server.await {
            Ok(served) if served.cut_at_shutdown > 0 => tracing::info!(
                listener = name,
                connections = served.cut_at_shutdown,
                "closed connections still open at the shutdown bound"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(listener = name, error = %e, "listener task failed"),
        }
    }
    // The records of uploads answered just before the stop reach their stream before the
    // database closes (if not, the next start delivers them).
    if !uploads.flush_deliveries(limits.shutdown_timeout).await {
        tracing::warn!(
            "stopped before every answered upload's record reached its stream; the next start delivers the rest"
        );
    }
    for w in workers {
        let _ = w.await;
    }
    if let Some(m) = mappings {
        m.finish().await;
    }
    functions.finish().await;
    if let Some(r) = retention {
        r.abort();
    }
    db.close();
    let _ = std::fs::remove_file(settings.run_file());
    drop(lock);
    Ok(())
}

/// The banner's access-key line. The development key's secret is shown at most once, at
/// the first start, and only on a terminal: a person reads that, where a file, a pipe or a
/// service manager's journal keeps it for whoever reads the log later. It is always in the
/// credentials file (mode 0600), which every start points to.
fn access_key_banner(
    new_key: Option<&sluice_identity::access_keys::AccessKey>,
    credentials: &std::path::Path,
    terminal: bool,
) -> String {
    let file = credentials.display();
    match new_key {
        Some(k) if terminal => format!(
            "Access key:    {} (secret {}) — created at first start, shown only now; kept in {file} (mode 0600)",
            k.id, k.secret
        ),
        Some(k) => format!(
            "Access key:    {} — created at first start; its secret is in {file} (mode 0600)",
            k.id
        ),
        None if credentials.exists() => format!(
            "Access key:    the development key is in {file} (mode 0600); `sluice keys list` lists all, `sluice keys create` makes more"
        ),
        None => {
            "Access keys:   `sluice keys list` lists them, `sluice keys create` makes one".into()
        }
    }
}

fn write_run_file(settings: &Settings, run: &RunInfo) -> Result<()> {
    let path = settings.run_file();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(run)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::access_key_banner;
    use sluice_identity::access_keys::AccessKey;

    #[test]
    fn the_secret_is_shown_once_and_only_on_a_terminal() {
        let k = AccessKey {
            id: "AKIAEXAMPLE".into(),
            secret: "TOPSECRETVALUE".into(),
            description: String::new(),
            created_ms: 0,
            policy: None,
        };
        let file = std::path::Path::new("/nonexistent/credentials");
        let shown = access_key_banner(Some(&k), file, true);
        assert!(shown.contains("TOPSECRETVALUE") && shown.contains("/nonexistent/credentials"));
        let piped = access_key_banner(Some(&k), file, false);
        assert!(!piped.contains("TOPSECRETVALUE") && piped.contains("AKIAEXAMPLE"));
        assert!(piped.contains("/nonexistent/credentials"));
        for terminal in [true, false] {
            assert!(!access_key_banner(None, file, terminal).contains("TOPSECRETVALUE"));
        }
    }
}
