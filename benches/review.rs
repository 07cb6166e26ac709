//! How long a review takes in the engine, without the network: the policy alone on a parsed
//! object, and the whole admission path from request bytes to response bytes.
//!
//! `cargo bench --bench review`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use daemonset_webhook::admission::{self, Endpoint};
use daemonset_webhook::policy::{self, Policy};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn object_of(review: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(review).unwrap();
    review["request"]["object"].clone()
}

fn bench(c: &mut Criterion) {
    let policy = Policy::default();
    for name in [
        "create-plain.json",
        "create-complete.json",
        "create-several-violations.json",
    ] {
        let body = fixture(name);
        let object = object_of(&body);
        c.bench_function(&format!("policy::review {name}"), |b| {
            b.iter(|| policy::review(black_box(&object), None, &policy))
        });
        c.bench_function(&format!("admission::review /mutate {name}"), |b| {
            b.iter(|| admission::review(black_box(&body), Endpoint::Mutate, &policy).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
