//! A versioned S3 bucket read as of a time (`ListObjectVersions`) and object tags as columns, on
//! moto's S3 server (s3s-fs implements neither call); on s3s-fs, both are config errors that name
//! the call, not dead letters per object.

use alluvium_core::arrow::array::{Array, AsArray};
use alluvium_core::types::ObjectRef;
use alluvium_core::{Discovery, ErrorKind, Source};
use alluvium_integration::{MotoS3Server, S3Server};
use alluvium_object::{Fetch, ObjectStoreSource};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::common::{bytes_of, fetch, registry, registry_at};
use crate::inventory::refs_of;

/// Writes three generations of a prefix, a second apart, and prints the times between them:
/// before the first, after the first (T1), after the second (T2).
const HISTORY: &str = r#"
b = sys.argv[1]
def put(k, body, tags=None):
    s3.put_object(Bucket=b, Key=k, Body=body, **({'Tagging': tags} if tags else {}))
t0 = time.time(); time.sleep(1.2)
put('p/a.jpg', b'a1', 'team=red&license=cc-by')
put('p/b.jpg', b'b1')
for i in range(1001):  # more versions than a page holds: one key across two pages
    put('p/many.jpg', f'm{i}'.encode())
put('q/elsewhere.jpg', b'x')
time.sleep(1.2); t1 = time.time(); time.sleep(1.2)
put('p/a.jpg', b'a2', 'team=blue')
s3.delete_object(Bucket=b, Key='p/b.jpg')
put('p/c.jpg', b'c1')
put('p/many.jpg', b'm-late')
time.sleep(1.2); t2 = time.time(); time.sleep(1.2)
put('p/a.jpg', b'a3')
s3.delete_object(Bucket=b, Key='p/c.jpg')
print(t0, t1, t2)
"#;

fn at(secs: f64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs)
}

/// Each key under the prefix is read at its version as of a time: deleted keys are left out, a
/// key whose versions span two pages of the listing is decided once, the references fetch the
/// bytes of that version, the tags are that version's, and a restored enumerator goes on after
/// the last key handed out.
#[tokio::test]
async fn a_versioned_bucket_is_read_as_of_a_time_with_each_versions_tags() {
    let Some(s3) = MotoS3Server::start() else { return };
    let bucket = s3.bucket();
    let times: Vec<f64> = s3.boto3(HISTORY, &[&bucket]).split_whitespace().map(|t| t.parse().unwrap()).collect();
    let reg = registry_at(&s3.endpoint, "testing", "testing");
    let source = |t: f64| {
        ObjectStoreSource::prefix(reg.clone(), format!("s3://{bucket}/p/"))
            .as_of(at(t))
            .tags(["team", "license"])
            .split_objects(1)
    };
    // (name, content, team tag) of everything the source emits as of `t`.
    let read = |t: f64| {
        let src = source(t);
        let reg = reg.clone();
        async move {
            src.validate().unwrap();
            let mut e = src.enumerator(None).await.unwrap();
            let mut out = Vec::new();
            while let Discovery::Splits(splits) = e.discover().await.unwrap() {
                for split in splits {
                    let mut r = src.open(&split, None).await.unwrap();
                    while let Some(b) = r.next_batch().await.unwrap() {
                        assert_eq!(b.schema(), src.schema());
                        let refs = b.column_by_name("ref").unwrap().as_struct();
                        let col = |n: &str| refs.column_by_name(n).unwrap().as_string::<i32>().clone();
                        let (uri, version) = (col("uri"), col("version"));
                        let team = b.column_by_name("team").unwrap().as_string::<i32>().clone();
                        for i in 0..b.num_rows() {
                            assert!(version.is_valid(i), "a version id on {}", uri.value(i));
                            let r = ObjectRef::new(uri.value(i)).version(version.value(i));
                            let got = fetch(&Fetch::new(reg.clone()), vec![r]).await;
                            assert!(got.failures.is_empty(), "{:?}", got.failures);
                            out.push((
                                uri.value(i).rsplit('/').next().unwrap().to_string(),
                                String::from_utf8(bytes_of(&got).remove(0)).unwrap(),
                                team.is_valid(i).then(|| team.value(i).to_string()),
                            ));
                        }
                        assert!(r.rejected().is_none());
                    }
                }
            }
            out
        }
    };
    let row = |n: &str, body: &str, team: Option<&str>| (n.to_string(), body.to_string(), team.map(str::to_string));
    assert_eq!(read(times[0]).await, vec![], "nothing was written yet");
    assert_eq!(
        read(times[1]).await,
        vec![row("a.jpg", "a1", Some("red")), row("b.jpg", "b1", None), row("many.jpg", "m1000", None)],
        "the first generation, with a1's tags"
    );
    assert_eq!(
        read(times[2]).await,
        vec![row("a.jpg", "a2", Some("blue")), row("c.jpg", "c1", None), row("many.jpg", "m-late", None)],
        "b deleted, c written, a2 tagged anew"
    );
    let now = at(times[2] + 60.0).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(read(now).await, vec![row("a.jpg", "a3", None), row("many.jpg", "m-late", None)], "c deleted");
    // The license tag, and a restore after the first split: the rest, once.
    let b = {
        let src = source(times[1]);
        let mut e = src.enumerator(None).await.unwrap();
        let Discovery::Splits(first) = e.discover().await.unwrap() else { panic!("a split") };
        let mut r = src.open(&first[0], None).await.unwrap();
        let b = r.next_batch().await.unwrap().unwrap();
        let (rest, splits) = refs_of(&src, Some(1)).await;
        let names: Vec<&str> = rest.iter().map(|(u, _, _)| u.rsplit('/').next().unwrap()).collect();
        assert_eq!((names, splits), (vec!["a.jpg", "b.jpg", "many.jpg"], 3));
        let mut e = src.enumerator(Some(e.snapshot())).await.unwrap();
        let Discovery::Splits(next) = e.discover().await.unwrap() else { panic!("a split") };
        assert!(next[0].payload[0]["uri"].as_str().unwrap().ends_with("/p/b.jpg"), "{}", next[0].payload);
        b
    };
    let license = b.column_by_name("license").unwrap().as_string::<i32>();
    assert_eq!(license.value(0), "cc-by");
}

/// Tags become columns; an object deleted between listing and reading is a dead letter with the
/// reason.
#[tokio::test]
async fn tags_become_columns_and_vanished_objects_are_rejected() {
    let Some(s3) = MotoS3Server::start() else { return };
    let bucket = s3.bucket();
    s3.boto3(
        "for k, t in [('t/a.jpg', 'team=red'), ('t/b.jpg', ''), ('t/c.jpg', 'team=green&x=y')]:\n    \
         s3.put_object(Bucket=sys.argv[1], Key=k, Body=b'img', Tagging=t)",
        &[&bucket],
    );
    let reg = registry_at(&s3.endpoint, "testing", "testing");
    let src = ObjectStoreSource::prefix(reg.clone(), format!("s3://{bucket}/t/")).tags(["team"]);
    let mut e = src.enumerator(None).await.unwrap();
    let Discovery::Splits(splits) = e.discover().await.unwrap() else { panic!("a split") };
    // The bucket is versioned: a plain delete hides c behind a delete marker.
    s3.boto3("s3.delete_object(Bucket=sys.argv[1], Key='t/c.jpg')", &[&bucket]);
    let mut r = src.open(&splits[0], None).await.unwrap();
    let b = r.next_batch().await.unwrap().unwrap();
    let team = b.column_by_name("team").unwrap().as_string::<i32>();
    let teams: Vec<Option<&str>> = (0..b.num_rows()).map(|i| team.is_valid(i).then(|| team.value(i))).collect();
    assert_eq!(teams, [Some("red"), None]);
    let rejected = r.rejected().expect("c rejected");
    assert_eq!(rejected.records.num_rows(), 1);
    assert!(rejected.failures[0].message.contains("tags: the object is gone"), "{:?}", rejected.failures);
}

/// s3s-fs implements neither call: `as_of` without an inventory and `tags` fail as config errors
/// that name the call and what needs it.
#[tokio::test]
async fn a_server_without_versions_or_tags_is_a_config_error() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    store.put(&Path::from("p/a.jpg"), PutPayload::from_static(b"a")).await.unwrap();
    let src = ObjectStoreSource::prefix(reg.clone(), format!("s3://{bucket}/p/")).as_of(std::time::SystemTime::now());
    src.validate().unwrap();
    let e = match src.enumerator(None).await {
        Ok(mut e) => e.discover().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("does not implement ListObjectVersions, which objects source `as_of` needs"), "{e}");
    let src = ObjectStoreSource::prefix(reg, format!("s3://{bucket}/p/")).tags(["team"]);
    let mut e = src.enumerator(None).await.unwrap();
    let Discovery::Splits(splits) = e.discover().await.unwrap() else { panic!("a split") };
    let e = src.open(&splits[0], None).await.unwrap().next_batch().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("does not implement GetObjectTagging"), "{e}");
}
