//! How long a review takes in the engine, without the network: the whole admission path from
//! request bytes to response bytes, and the policy alone on the object's JSON text.
//!
//! `cargo bench --bench review`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use daemonset_webhook::admission::{self, Endpoint};
use daemonset_webhook::policy::{self, Policy};
use serde_json::Value;

fn review_file(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn object_text(review: &[u8]) -> String {
    let review: Value = serde_json::from_slice(review).unwrap();
    review["request"]["object"].to_string()
}

fn bench(c: &mut Criterion) {
    let policy = Policy::default();
    for path in [
        "tests/fixtures/create-plain.json",
        "tests/fixtures/create-complete.json",
        "tests/fixtures/create-several-violations.json",
        "benches/reviews/create-node-exporter.json",
        "benches/reviews/create-aws-node.json",
    ] {
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        let body = review_file(path);
        let object = object_text(&body);
        c.bench_function(&format!("admission::review /mutate {name}"), |b| {
            b.iter(|| admission::review(black_box(&body), Endpoint::Mutate, &policy).unwrap())
        });
        c.bench_function(&format!("policy::review_json {name}"), |b| {
            b.iter(|| policy::review_json(black_box(&object), None, &policy).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
