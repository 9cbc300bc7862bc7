//! Time to build a table from real files (the cost on a cache miss).
use criterion::{criterion_group, criterion_main, Criterion};

const FILES: [&str; 2] = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11"];

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for path in FILES {
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("skipping {path}: not installed");
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        group.bench_function(name, |b| {
            b.iter(|| kestrel_unwind::build(std::hint::black_box(&bytes)).unwrap())
        });
        let table = kestrel_unwind::build(&bytes).unwrap().table;
        let ser = table.to_bytes();
        group.bench_function(format!("{name}/from_bytes"), |b| {
            b.iter(|| kestrel_unwind::Table::from_bytes(std::hint::black_box(&ser)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
