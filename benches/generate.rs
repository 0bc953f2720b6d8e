//! Image generation speed, per core: `cargo bench --bench generate`.
//! Criterion runs one thread, so its throughput is images per second per core.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imgstream::domain::ImageFormat;
use imgstream::generate::{ImageSpec, render};
use std::time::Duration;

fn generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for size in [256u32, 1024] {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp] {
            let spec = ImageSpec {
                width: size,
                height: size,
                format,
            };
            group.throughput(Throughput::Elements(1));
            let mut seed = 0u64;
            group.bench_with_input(
                BenchmarkId::new(format.name(), format!("{size}x{size}")),
                &spec,
                |b, spec| {
                    b.iter(|| {
                        seed += 1;
                        render(spec, seed).expect("render")
                    })
                },
            );
        }
    }
    for size in [256u32, 1024] {
        group.bench_function(
            BenchmarkId::new("draw-only", format!("{size}x{size}")),
            |b| b.iter(|| imgstream::generate::draw_rgb(size, size, 7)),
        );
    }
    group.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);
