//! The AWS managed policies teams attach by ARN for this pipeline, with the statements AWS
//! documents for them (the "AWS Managed Policy" reference), so that attaching
//! `arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole` grants here what it
//! grants on AWS.
//!
//! One deliberate difference: AWS's `ReadOnlyAccess` lists read actions of every AWS
//! service (thousands); the catalog's version lists the read actions of the services
//! sluice serves (S3, Kinesis, Lambda, API Gateway, Cognito user pools, IAM, STS, CloudWatch
//! Logs), which is what it allows here either way.

/// An AWS managed policy.
#[derive(Debug, Clone, Copy)]
pub struct AwsManaged {
    pub name: &'static str,
    pub path: &'static str,
    /// Stable ids, like AWS's (`ANPA` + 17 characters).
    pub id: &'static str,
    pub description: &'static str,
    /// The default version's id (`v1`, `v2`, …), as AWS reports it.
    pub version: &'static str,
    pub document: &'static str,
    /// When AWS created it (RFC 3339).
    pub created: &'static str,
    /// When AWS last edited it (RFC 3339).
    pub updated: &'static str,
}

impl AwsManaged {
    pub fn arn(&self) -> String {
        format!("arn:aws:iam::aws:policy{}{}", self.path, self.name)
    }
}

pub const CATALOG: &[AwsManaged] = &[
    AwsManaged {
        name: "AdministratorAccess",
        path: "/",
        id: "ANPAIWMBCKSKIEE64ZLYK",
        description: "Provides full access to AWS services and resources.",
        version: "v1",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        created: "2015-02-06T18:39:46Z",
        updated: "2015-02-06T18:39:46Z",
    },
    AwsManaged {
        name: "ReadOnlyAccess",
        path: "/",
        id: "ANPAILL3HVNFSB6DCOWYQ",
        description: "Provides read-only access to AWS services and resources.",
        version: "v1",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:Get*","s3:List*","s3:Describe*","kinesis:Describe*","kinesis:Get*","kinesis:List*","lambda:Get*","lambda:List*","apigateway:GET","cognito-idp:Describe*","cognito-idp:Get*","cognito-idp:List*","cognito-idp:AdminGet*","cognito-idp:AdminList*","iam:Get*","iam:List*","iam:Generate*","iam:Simulate*","sts:GetCallerIdentity","logs:Describe*","logs:Get*","logs:FilterLogEvents"],"Resource":"*"}]}"#,
        created: "2015-02-06T18:39:48Z",
        updated: "2015-02-06T18:39:48Z",
    },
    AwsManaged {
        name: "AmazonS3FullAccess",
        path: "/",
        id: "ANPAIFIR6V6BVTRAHWINE",
        description: "Provides full access to all buckets via the AWS Management Console.",
        version: "v2",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*","s3-object-lambda:*"],"Resource":"*"}]}"#,
        created: "2015-02-06T18:40:58Z",
        updated: "2021-09-27T20:16:37Z",
    },
    AwsManaged {
        name: "AmazonS3ReadOnlyAccess",
        path: "/",
        id: "ANPAIZTJ4DXE7G6AGAE6M",
        description: "Provides read only access to all buckets via the AWS Management Console.",
        version: "v3",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:Get*","s3:List*","s3:Describe*","s3-object-lambda:Get*","s3-object-lambda:List*"],"Resource":"*"}]}"#,
        created: "2015-02-06T18:40:59Z",
        updated: "2023-08-10T21:31:39Z",
    },
    AwsManaged {
        name: "AmazonKinesisFullAccess",
        path: "/",
        id: "ANPAIVF32HAMOXCUYRAYE",
        description: "Provides full access to all streams via the AWS Management Console.",
        version: "v1",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kinesis:*","Resource":"*"}]}"#,
        created: "2015-02-06T18:40:37Z",
        updated: "2015-02-06T18:40:37Z",
    },
    AwsManaged {
        name: "AmazonKinesisReadOnlyAccess",
        path: "/",
        id: "ANPAIOCMTDT5RLKZ2CAJO",
        description: "Provides read only access to all streams via the AWS Management Console.",
        version: "v1",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kinesis:Get*","kinesis:List*","kinesis:Describe*"],"Resource":"*"}]}"#,
        created: "2015-02-06T18:40:38Z",
        updated: "2015-02-06T18:40:38Z",
    },
    AwsManaged {
        name: "AWSLambdaBasicExecutionRole",
        path: "/service-role/",
        id: "ANPAJNCQGXC42545SKXIK",
        description: "Provides write permissions to CloudWatch Logs.",
        version: "v1",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["logs:CreateLogGroup","logs:CreateLogStream","logs:PutLogEvents"],"Resource":"*"}]}"#,
        created: "2015-04-09T15:03:43Z",
        updated: "2015-04-09T15:03:43Z",
    },
    AwsManaged {
        name: "AWSLambdaKinesisExecutionRole",
        path: "/service-role/",
        id: "ANPAJHOLKJPXV4GBRMJUQ",
        description: "Provides list and read access to Kinesis streams and write permissions to CloudWatch logs.",
        version: "v2",
        document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kinesis:DescribeStream","kinesis:DescribeStreamSummary","kinesis:GetRecords","kinesis:GetShardIterator","kinesis:ListShards","kinesis:ListStreams","kinesis:SubscribeToShard","logs:CreateLogGroup","logs:CreateLogStream","logs:PutLogEvents"],"Resource":"*"}]}"#,
        created: "2015-04-09T15:14:16Z",
        updated: "2018-11-19T20:09:24Z",
    },
];

/// The AWS managed policy with this ARN.
pub fn by_arn(arn: &str) -> Option<&'static AwsManaged> {
    CATALOG.iter().find(|p| p.arn() == arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_parses_and_ids_are_unique() {
        let mut ids = std::collections::HashSet::new();
        for p in CATALOG {
            sluice_policy::Policy::parse(p.document).expect(p.name);
            assert!(ids.insert(p.id), "{} repeats an id", p.name);
            assert_eq!(p.id.len(), 21);
        }
        let kinesis = by_arn("arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole")
            .expect("known");
        let doc = sluice_policy::Policy::parse(kinesis.document).expect("parses");
        assert!(
            doc.decide(
                "kinesis:GetRecords",
                "arn:aws:kinesis:us-east-2:000000000000:stream/s"
            )
            .allowed()
        );
        assert!(
            !doc.decide(
                "kinesis:PutRecord",
                "arn:aws:kinesis:us-east-2:000000000000:stream/s"
            )
            .allowed()
        );
        assert!(by_arn("arn:aws:iam::aws:policy/AWSLambdaKinesisExecutionRole").is_none());
    }
}
