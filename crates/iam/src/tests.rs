//! The registry on the test engine (SQLite, or PostgreSQL with `SLUICE_TEST_META=postgres`).

use super::*;

const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
const PUT_RECORD: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kinesis:PutRecord"],"Resource":"arn:aws:kinesis:us-east-2:000000000000:stream/uploads"}]}"#;
const STREAM: &str = "arn:aws:kinesis:us-east-2:000000000000:stream/uploads";

struct Fixture {
    _engines: sluice_meta::conformance::TestEngines,
    iam: Iam,
    keys: AccessKeys,
}

fn fixture() -> Fixture {
    let engines = sluice_meta::conformance::TestEngines::new();
    let mut migrations = sluice_identity::access_keys::MIGRATIONS.to_vec();
    migrations.extend_from_slice(MIGRATIONS);
    let db = engines.meta("iam", &migrations);
    let keys = AccessKeys::open(db.clone(), &engines.dir().join("keys.key")).expect("keys");
    let iam = Iam::new(db, "000000000000", keys.clone());
    keys.attach_users(std::sync::Arc::new(iam.clone()));
    Fixture {
        _engines: engines,
        iam,
        keys,
    }
}

fn role(name: &str) -> NewEntity {
    NewEntity {
        name: name.into(),
        assume_role_policy: Some(TRUST.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_with_inline_and_attached_policies() {
    let f = fixture();
    let r = f
        .iam
        .create(Kind::Role, role("upload-fn-role"))
        .await
        .expect("create");
    assert!(r.id.starts_with("AROA") && r.id.len() == 21);
    assert_eq!(r.arn, "arn:aws:iam::000000000000:role/upload-fn-role");
    assert_eq!(r.max_session_duration, Some(3600));
    assert!(matches!(
        f.iam.create(Kind::Role, role("Upload-Fn-Role")).await,
        Err(IamError::EntityAlreadyExists(_))
    ));
    assert!(matches!(
        f.iam
            .create(
                Kind::Role,
                NewEntity {
                    name: "x".into(),
                    ..Default::default()
                }
            )
            .await,
        Err(IamError::Validation(_))
    ));
    // Names are found without regard to case.
    assert_eq!(
        f.iam
            .get(Kind::Role, "UPLOAD-FN-ROLE")
            .await
            .expect("get")
            .name,
        "upload-fn-role"
    );

    f.iam
        .put_inline(Kind::Role, "upload-fn-role", "put-record", PUT_RECORD)
        .await
        .expect("put");
    assert_eq!(
        f.iam
            .list_inline(Kind::Role, "upload-fn-role")
            .await
            .expect("list"),
        vec!["put-record"]
    );
    let (name, doc) = f
        .iam
        .get_inline(Kind::Role, "upload-fn-role", "PUT-RECORD")
        .await
        .expect("get");
    assert_eq!((name.as_str(), doc.as_str()), ("put-record", PUT_RECORD));
    assert!(matches!(
        f.iam
            .put_inline(Kind::Role, "upload-fn-role", "bad", "{\"Statement\":[]")
            .await,
        Err(IamError::MalformedPolicyDocument(_))
    ));

    let basic = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole";
    f.iam
        .attach(Kind::Role, "upload-fn-role", basic)
        .await
        .expect("attach");
    f.iam
        .attach(Kind::Role, "upload-fn-role", basic)
        .await
        .expect("attach twice");
    assert_eq!(
        f.iam
            .list_attached(Kind::Role, "upload-fn-role")
            .await
            .expect("list"),
        vec![("AWSLambdaBasicExecutionRole".to_owned(), basic.to_owned())]
    );
    assert!(matches!(
        f.iam
            .attach(
                Kind::Role,
                "upload-fn-role",
                "arn:aws:iam::aws:policy/NoSuchPolicy"
            )
            .await,
        Err(IamError::NoSuchEntity(_))
    ));
    assert_eq!(
        f.iam.get_policy(basic).await.expect("get").attachment_count,
        1
    );

    // Deleting is refused while policies remain, as IAM refuses it.
    assert!(matches!(
        f.iam.delete(Kind::Role, "upload-fn-role").await,
        Err(IamError::DeleteConflict(_))
    ));
    f.iam
        .delete_inline(Kind::Role, "upload-fn-role", "put-record")
        .await
        .expect("delete inline");
    assert!(matches!(
        f.iam.delete(Kind::Role, "upload-fn-role").await,
        Err(IamError::DeleteConflict(_))
    ));
    f.iam
        .detach(Kind::Role, "upload-fn-role", basic)
        .await
        .expect("detach");
    f.iam
        .delete(Kind::Role, "upload-fn-role")
        .await
        .expect("delete");
    assert!(matches!(
        f.iam.get(Kind::Role, "upload-fn-role").await,
        Err(IamError::NoSuchEntity(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_policies_and_versions() {
    let f = fixture();
    let p = f
        .iam
        .create_policy(
            "stream-writer",
            Some("/app/"),
            PUT_RECORD,
            Some("writes"),
            vec![],
        )
        .await
        .expect("create");
    assert_eq!(p.arn, "arn:aws:iam::000000000000:policy/app/stream-writer");
    assert!(matches!(
        f.iam
            .create_policy("STREAM-writer", None, PUT_RECORD, None, vec![])
            .await,
        Err(IamError::EntityAlreadyExists(_))
    ));
    for _ in 0..4 {
        f.iam
            .create_policy_version(&p.arn, PUT_RECORD, false)
            .await
            .expect("version");
    }
    assert!(matches!(
        f.iam.create_policy_version(&p.arn, PUT_RECORD, false).await,
        Err(IamError::LimitExceeded(_))
    ));
    let versions = f.iam.list_policy_versions(&p.arn).await.expect("versions");
    assert_eq!(versions.first().map(|v| v.version_id.as_str()), Some("v5"));
    assert!(
        versions
            .iter()
            .any(|v| v.version_id == "v1" && v.is_default)
    );
    f.iam
        .set_default_version(&p.arn, "v3")
        .await
        .expect("default");
    assert!(matches!(
        f.iam.delete_policy_version(&p.arn, "v3").await,
        Err(IamError::DeleteConflict(_))
    ));
    assert!(matches!(
        f.iam.delete_policy(&p.arn).await,
        Err(IamError::DeleteConflict(_))
    ));
    for v in ["v1", "v2", "v4", "v5"] {
        f.iam
            .delete_policy_version(&p.arn, v)
            .await
            .expect("delete version");
    }
    let local = f
        .iam
        .list_policies(Scope::Local, false, "/")
        .await
        .expect("list");
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].default_version, "v3");
    let aws = f
        .iam
        .list_policies(Scope::Aws, false, "/service-role/")
        .await
        .expect("list");
    assert_eq!(aws.len(), 2);
    f.iam.delete_policy(&p.arn).await.expect("delete");
    assert!(matches!(
        f.iam.get_policy(&p.arn).await,
        Err(IamError::NoSuchEntity(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_key_is_allowed_what_its_policies_allow() {
    let f = fixture();
    f.iam
        .create(
            Kind::User,
            NewEntity {
                name: "alice".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user");
    let (_, key) = f.iam.create_access_key("alice").await.expect("key");
    let grant = f
        .keys
        .lookup(&key.id)
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!(grant.secret, key.secret);
    let user = grant.user.clone().expect("a user's key");
    assert_eq!(user.arn, "arn:aws:iam::000000000000:user/alice");
    let policy = grant.policy.expect("a user has policies");
    assert!(
        !policy.decide("kinesis:PutRecord", STREAM).allowed(),
        "nothing by default"
    );

    // A group's attached policy reaches its members, at once in this process.
    f.iam
        .create(
            Kind::Group,
            NewEntity {
                name: "writers".into(),
                ..Default::default()
            },
        )
        .await
        .expect("group");
    let writer = f
        .iam
        .create_policy("writer", None, PUT_RECORD, None, vec![])
        .await
        .expect("policy");
    f.iam
        .attach(Kind::Group, "writers", &writer.arn)
        .await
        .expect("attach");
    f.iam
        .add_to_group("writers", "alice")
        .await
        .expect("member");
    let policy = f
        .keys
        .lookup(&key.id)
        .await
        .expect("lookup")
        .expect("known")
        .policy
        .expect("policy");
    assert!(policy.decide("kinesis:PutRecord", STREAM).allowed());

    // An explicit Deny of the user's own wins over the group's Allow.
    f.iam
        .put_inline(
            Kind::User,
            "alice",
            "no-writes",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kinesis:Put*","Resource":"*"}]}"#,
        )
        .await
        .expect("deny");
    let policy = f
        .keys
        .lookup(&key.id)
        .await
        .expect("lookup")
        .expect("known")
        .policy
        .expect("policy");
    assert_eq!(
        policy.decide("kinesis:PutRecord", STREAM),
        sluice_policy::Decision::ExplicitDeny
    );

    // Inactive keys are refused; a third key is over the limit; the user cannot go while it
    // has keys, policies or groups.
    f.iam
        .update_access_key("alice", &key.id, false)
        .await
        .expect("deactivate");
    assert!(f.keys.lookup(&key.id).await.expect("lookup").is_none());
    f.iam.create_access_key("alice").await.expect("second");
    assert!(matches!(
        f.iam.create_access_key("alice").await,
        Err(IamError::LimitExceeded(_))
    ));
    assert!(matches!(
        f.iam.delete(Kind::User, "alice").await,
        Err(IamError::DeleteConflict(_))
    ));
    let (_, keys) = f.iam.list_access_keys("alice").await.expect("keys");
    for k in keys {
        f.iam
            .delete_access_key("alice", &k.id)
            .await
            .expect("delete key");
    }
    assert!(matches!(
        f.iam.delete_access_key("alice", &key.id).await,
        Err(IamError::NoSuchEntity(_))
    ));
    f.iam
        .delete_inline(Kind::User, "alice", "no-writes")
        .await
        .expect("inline");
    assert!(matches!(
        f.iam.delete(Kind::User, "alice").await,
        Err(IamError::DeleteConflict(_))
    ));
    assert!(matches!(
        f.iam.delete(Kind::Group, "writers").await,
        Err(IamError::DeleteConflict(_))
    ));
    f.iam
        .remove_from_group("writers", "alice")
        .await
        .expect("leave");
    f.iam
        .delete(Kind::User, "alice")
        .await
        .expect("delete user");
    f.iam
        .detach(Kind::Group, "writers", &writer.arn)
        .await
        .expect("detach");
    f.iam
        .delete(Kind::Group, "writers")
        .await
        .expect("delete group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_sessions_carry_the_roles_policies_and_expire() {
    let f = fixture();
    let trust_account = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"000000000000"},"Action":"sts:AssumeRole"}]}"#;
    f.iam
        .create(
            Kind::Role,
            NewEntity {
                name: "writer".into(),
                assume_role_policy: Some(trust_account.into()),
                ..Default::default()
            },
        )
        .await
        .expect("role");
    f.iam
        .create(Kind::Role, role("lambda-only"))
        .await
        .expect("role");
    f.iam
        .put_inline(Kind::Role, "writer", "put", PUT_RECORD)
        .await
        .expect("policy");
    let root = sts::Caller {
        arn: "arn:aws:iam::000000000000:root",
        account: "000000000000",
        role_arn: None,
        service: None,
    };
    let none = sluice_policy::Context::new();
    let s = f
        .iam
        .assume_role(
            root,
            "arn:aws:iam::000000000000:role/writer",
            "s1",
            Some(900),
            &none,
        )
        .await
        .expect("assume");
    assert_eq!(s.arn, "arn:aws:sts::000000000000:assumed-role/writer/s1");
    let g = f
        .keys
        .lookup(&s.credentials.access_key_id)
        .await
        .expect("lookup")
        .expect("a live session");
    assert_eq!(
        g.session_token_hash,
        Some(sluice_identity::access_keys::token_hash(
            &s.credentials.session_token
        ))
    );
    let user = g.user.expect("the session's role");
    assert_eq!(user.arn, s.arn);
    assert_eq!(user.session.as_deref(), Some("s1"));
    assert!(
        g.policy
            .expect("policy")
            .decide("kinesis:PutRecord", STREAM)
            .allowed()
    );

    // A role that trusts only Lambda cannot be assumed by the account; Lambda can.
    assert!(matches!(
        f.iam
            .assume_role(
                root,
                "arn:aws:iam::000000000000:role/lambda-only",
                "s2",
                None,
                &none
            )
            .await,
        Err(IamError::AccessDenied(_))
    ));
    let lambda = sts::Caller {
        service: Some("lambda.amazonaws.com"),
        ..root
    };
    f.iam
        .assume_role(
            lambda,
            "arn:aws:iam::000000000000:role/lambda-only",
            "fn",
            None,
            &none,
        )
        .await
        .expect("lambda may");
    assert!(
        matches!(
            f.iam
                .assume_role(
                    root,
                    "arn:aws:iam::000000000000:role/writer",
                    "s",
                    Some(900),
                    &none
                )
                .await,
            Err(IamError::Validation(_))
        ),
        "a one-character session name"
    );
    assert!(
        matches!(
            f.iam
                .assume_role(
                    root,
                    "arn:aws:iam::000000000000:role/writer",
                    "s3",
                    Some(3601),
                    &none
                )
                .await,
            Err(IamError::Validation(_))
        ),
        "longer than the role's maximum"
    );

    // An expired session is an unknown key.
    let old = f
        .keys
        .create_session("writer", "old", sluice_meta::now_ms() - 1)
        .await
        .expect("session");
    assert!(
        f.keys
            .lookup(&old.access_key_id)
            .await
            .expect("lookup")
            .is_none()
    );
}
