//! The admin API's live index at scale: one page of instances out of a
//! million (no filter, a selective filter, deep in the cursor), against
//! the baseline of what a page without the index's one-pass selection
//! would cost: every matching id collected and sorted (`Index::ids`).
//!
//! `cargo bench --bench index` (1 M instances; `BATON_BENCH_INSTANCES`
//! changes it). Under `cargo test` each case runs once on 10 000.

use std::hint::black_box;
use std::sync::Arc;

use baton::engine::{Incident, Status};
use baton::index::{Entry, Filter, Index, Update};
use criterion::{Criterion, criterion_group, criterion_main};

fn instances() -> usize {
    let benching = std::env::args().any(|a| a == "--bench");
    std::env::var("BATON_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 10_000 })
}

/// `n` instances over 8 shards: most active, some ended, 1 % with an incident.
fn index(n: usize) -> Index {
    let index = Index::default();
    let record: Arc<[u8]> = Arc::from(&[0u8; 64][..]);
    index.apply((0..n).map(|i| {
        let status = match i % 10 {
            0 => Status::Completed,
            1 => Status::Failed,
            _ => Status::Active,
        };
        let incidents: Box<[Incident]> = if i % 100 == 7 {
            Box::new([Incident {
                id: 1,
                token: Some(1),
                step: Some(2),
                reason: "step 'charge' timed out".into(),
                at: 1_700_000_000_000,
            }])
        } else {
            Box::new([])
        };
        Update::Put(
            Arc::from(format!("order-to-cash/o-{i:08}")),
            Entry {
                shard: (i % 8) as i32,
                version: 1,
                status,
                steps: Box::new([2]),
                incidents,
                started_at: 1_700_000_000_000 + i as u64,
                updated_at: 1_700_000_000_000 + i as u64,
                compensated: false,
                record: record.clone(),
            },
        )
    }));
    index
}

fn bench(c: &mut Criterion) {
    let n = instances();
    let index = index(n);
    let none = |_: &str, _: u32| None;
    let all = Filter::default();
    let incidents = Filter {
        incident: Some(true),
        ..Filter::default()
    };
    let middle = format!("order-to-cash/o-{:08}", n / 2);
    let mut g = c.benchmark_group(format!("index_{n}"));
    g.sample_size(10);
    g.bench_function("page_100_first", |b| {
        b.iter(|| black_box(index.page(&all, None, 100, &none)))
    });
    g.bench_function("page_100_after_middle", |b| {
        b.iter(|| black_box(index.page(&all, Some(&middle), 100, &none)))
    });
    g.bench_function("page_100_with_incident", |b| {
        b.iter(|| black_box(index.page(&incidents, None, 100, &none)))
    });
    g.bench_function("baseline_sort_every_id", |b| {
        b.iter(|| black_box(index.ids(&all, &none)))
    });
    g.bench_function("count_with_incident", |b| {
        b.iter(|| black_box(index.count(&incidents, &none)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
