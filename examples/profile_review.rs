fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("tests/fixtures/create-plain.json".into());
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200_000);
    let body = std::fs::read(path).unwrap();
    let policy = daemonset_webhook::policy::Policy::default();
    let start = std::time::Instant::now();
    let mut total = 0;
    for _ in 0..n {
        let r = daemonset_webhook::admission::review(
            &body,
            daemonset_webhook::admission::Endpoint::Mutate,
            &policy,
        )
        .unwrap();
        total += r.body.len();
    }
    eprintln!("{:?} per review ({total})", start.elapsed() / n as u32);
}
