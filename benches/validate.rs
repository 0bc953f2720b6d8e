//! Cost of checking one record (signature, header dimensions, sha256), per core:
//! `cargo bench --bench validate`. The consumer runs this for every image it stores.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imgstream::domain::{ImageFormat, ImageRecord, sha256_hex};
use imgstream::generate::{ImageSpec, render};
use imgstream::validate::{Limits, validate};
use std::time::Duration;

fn record(format: ImageFormat, width: u32, height: u32) -> ImageRecord {
    let data = render(
        &ImageSpec {
            width,
            height,
            format,
        },
        1,
    )
    .expect("render");
    ImageRecord {
        image_id: uuid::Uuid::new_v4(),
        customer_id: "bench".into(),
        source_id: "cam-1".into(),
        created_at: chrono::Utc::now(),
        content_type: format.content_type().into(),
        width,
        height,
        sha256: sha256_hex(&data),
        data: Bytes::from(data),
        reference: None,
    }
}

fn checking(c: &mut Criterion) {
    let limits = Limits {
        max_pixels: 100_000_000,
        max_image_bytes: 64 << 20,
        ids: Default::default(),
    };
    let mut group = c.benchmark_group("validate");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (width, height) in [(400, 300), (2000, 1500)] {
        for format in ImageFormat::ALL {
            let record = record(format, width, height);
            group.throughput(Throughput::Bytes(record.data.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format.name(), format!("{width}x{height}")),
                &record,
                |b, record| b.iter(|| validate(record, &limits).expect("valid")),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, checking);
criterion_main!(benches);
