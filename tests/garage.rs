//! The S3 store the S3 tests use, checked on its own, with the signed
//! requests of `common::garage` (curl `--aws-sigv4`, path-style): a
//! single-node Garage takes an object write and read, and refuses a request
//! signed with another secret; a three-node cluster serves through one node
//! what was written through another; a multipart upload in progress is
//! listed on every node, and after its abort, eventually on none. The
//! storage driver on S3 (to come) runs the shared driver suite against the
//! same harness.

use crate::common;

use common::clients;
use common::garage::{
    Garage, GarageCluster, multipart_uploads, object_keys, s3_request, s3_request_as,
};

fn random(len: usize) -> Vec<u8> {
    let mut content = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut content);
    content
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn a_single_node_garage_stores_signed_objects_and_refuses_a_wrong_signature() {
    clients::require("curl");
    let garage = Garage::start();
    let endpoint = garage.endpoint();
    let content = random(1 << 20);

    let (put, body) = s3_request(&endpoint, "PUT", "a/b", Some(&content));
    assert_eq!(put, 200, "{}\n{}", text(&body), garage.log());
    let (got, body) = s3_request(&endpoint, "GET", "a/b", None);
    assert_eq!(got, 200);
    assert!(body == content, "the object read back differs");
    assert_eq!(object_keys(&endpoint, "a/"), ["a/b"]);

    let wrong = "f".repeat(64);
    let (refused, body) = s3_request_as(&wrong, &endpoint, "GET", "a/b", None);
    assert_eq!(refused, 403, "{}", text(&body));
    let (missing, _) = s3_request(&endpoint, "GET", "no/such/key", None);
    assert_eq!(missing, 404);
}

#[test]
fn a_three_node_cluster_serves_through_node_3_what_node_1_took() {
    clients::require("curl");
    let cluster = GarageCluster::start(3);
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0], cluster.endpoint());
    let content = random(3 << 20);

    let (put, body) = s3_request(&endpoints[0], "PUT", "replicated/blob", Some(&content));
    assert_eq!(put, 200, "{}\n{}", text(&body), cluster.log());
    let (got, body) = s3_request(&endpoints[2], "GET", "replicated/blob", None);
    assert_eq!(got, 200, "{}\n{}", text(&body), cluster.log());
    assert!(
        body == content,
        "node 3 served {} bytes that differ from the {} node 1 took",
        body.len(),
        content.len()
    );
    for endpoint in &endpoints {
        assert_eq!(object_keys(endpoint, "replicated/"), ["replicated/blob"]);
    }
}

#[test]
fn a_multipart_upload_is_listed_until_it_is_aborted() {
    clients::require("curl");
    let mut cluster = GarageCluster::start(3);
    let endpoint = cluster.endpoint();

    let (started, body) = s3_request(&endpoint, "POST", "uploads/x?uploads", None);
    let body = text(&body);
    assert_eq!(started, 200, "{body}\n{}", cluster.log());
    let id = body
        .split_once("<UploadId>")
        .and_then(|(_, rest)| rest.split_once("</UploadId>"))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("no UploadId in {body}"));
    let part = random(1 << 20);
    let (put, body) = s3_request(
        &endpoint,
        "PUT",
        &format!("uploads/x?partNumber=1&uploadId={id}"),
        Some(&part),
    );
    assert_eq!(put, 200, "{}", text(&body));

    let listed = vec![("uploads/x".to_owned(), id.clone())];
    for endpoint in cluster.endpoints() {
        assert_eq!(multipart_uploads(&endpoint), listed);
    }
    // Not an object until it is completed.
    assert!(object_keys(&endpoint, "uploads/").is_empty());

    let (aborted, body) = s3_request(
        &endpoint,
        "DELETE",
        &format!("uploads/x?uploadId={id}"),
        None,
    );
    assert_eq!(aborted, 204, "{}", text(&body));
    // A listing, on any node, can lag behind the abort (see common::garage).
    let endpoints = cluster.endpoints();
    cluster.until("the aborted upload gone from every node's listing", || {
        endpoints
            .iter()
            .all(|endpoint| multipart_uploads(endpoint).is_empty())
    });
}
