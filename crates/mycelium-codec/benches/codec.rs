//! Codec micro-benchmarks: build, full validation, view + walk. One message per iteration, so
//! criterion's throughput line reads directly as messages per second on one core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mycelium_codec::records::Trade;
use mycelium_codec::{Message, MessageBuilder, RelayDomain, SourceType, validate};

fn trade() -> Trade {
    Trade {
        instrument_id: 42.into(),
        price: 250_050_000_000.into(),
        volume: 150_000_000.into(),
        timestamp_ns: 1_700_000_000_000_000_000u64.into(),
        side: 1,
    }
}

fn build_into(buf: &mut Vec<u8>, sequence: u64) -> usize {
    buf.clear();
    let mut builder = MessageBuilder::new(buf, RelayDomain::MarketData, SourceType::KrakenCollector)
        .sequence(sequence)
        .timestamp_ns(1_700_000_000_000_000_000);
    builder.add_record(&trade()).expect("trade fits");
    builder.finish()
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("trade");
    group.throughput(Throughput::Elements(1));

    let mut buf = Vec::with_capacity(128);
    let mut sequence = 0u64;
    group.bench_function("build_with_checksum", |b| {
        b.iter(|| {
            sequence += 1;
            black_box(build_into(black_box(&mut buf), sequence))
        })
    });

    group.bench_function("build_with_checksum_and_clock", |b| {
        b.iter(|| {
            buf.clear();
            let mut builder = MessageBuilder::new(
                black_box(&mut buf),
                RelayDomain::MarketData,
                SourceType::KrakenCollector,
            );
            builder.add_record(&trade()).expect("trade fits");
            black_box(builder.finish())
        })
    });

    build_into(&mut buf, 1);
    let bytes = buf.clone();
    group.bench_function("validate_full_with_checksum", |b| {
        b.iter(|| {
            let message = validate(black_box(&bytes)).expect("valid");
            black_box(
                message
                    .record::<Trade>()
                    .expect("present")
                    .expect("sized")
                    .price
                    .get(),
            )
        })
    });

    group.bench_function("view_and_walk", |b| {
        b.iter(|| {
            let message = Message::new(black_box(&bytes)).expect("view");
            let mut sum = 0usize;
            for tlv in message.tlvs() {
                let tlv = tlv.expect("well formed");
                sum += tlv.tlv_type as usize + tlv.value.len();
            }
            black_box(sum)
        })
    });
    group.finish();
}

criterion_group!(codec, benches);
criterion_main!(codec);
