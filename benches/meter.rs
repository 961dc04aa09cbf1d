//! Criterion micro-benchmarks of the per-chunk metering hot path (SSE parser → event classification → meter)
//! and of the per-request cost computation. Run with `cargo bench --bench meter`; target ≤ 1 µs per chunk.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rust_decimal::Decimal;
use tokio::time::Instant;
use tollgate::meter::Meter;
use tollgate::openai::{Endpoint, classify_event};
use tollgate::pricing::{Price, Usage, to_nano_usd};
use tollgate::sse::SseParser;

/// A typical OpenAI chat completion chunk with one content token, as sent on the wire.
const CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\
\"created\":1741569952,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\
\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// What `MeteredBody::observe` does with one upstream read: parse, classify each event, meter it.
fn meter_read(parser: &mut SseParser, meter: &mut Meter, data: &[u8]) -> u64 {
    let now = Instant::now();
    let mut gaps = 0;
    parser.feed(data, &mut |event, _end| {
        if let Some(ev) = event {
            let info = classify_event(ev.event, ev.data);
            if meter.on_event(&info, now).is_some() {
                gaps += 1;
            }
        }
    });
    gaps
}

fn chunks(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_chunk");
    group.throughput(Throughput::Bytes(CHUNK.len() as u64));
    group.bench_function(format!("parse+classify+meter ({} B, one read)", CHUNK.len()), |b| {
        let mut parser = SseParser::new(1 << 20);
        let mut meter = Meter::new(Endpoint::ChatCompletions, true, Instant::now(), 10);
        b.iter(|| meter_read(&mut parser, &mut meter, black_box(CHUNK)));
    });
    // The same chunk arriving in two reads (the event straddles them, so the parser buffers the line).
    let (head, tail) = CHUNK.split_at(CHUNK.len() / 2);
    group.bench_function(format!("parse+classify+meter ({} B, split in two reads)", CHUNK.len()), |b| {
        let mut parser = SseParser::new(1 << 20);
        let mut meter = Meter::new(Endpoint::ChatCompletions, true, Instant::now(), 10);
        b.iter(|| {
            meter_read(&mut parser, &mut meter, black_box(head)) + meter_read(&mut parser, &mut meter, black_box(tail))
        });
    });
    group.bench_function("parse only", |b| {
        let mut parser = SseParser::new(1 << 20);
        b.iter(|| {
            let mut n = 0usize;
            parser.feed(black_box(CHUNK), &mut |event, _| n += usize::from(event.is_some()));
            n
        });
    });
    group.finish();
}

fn cost(c: &mut Criterion) {
    let price = Price {
        input_per_1m: Decimal::new(250, 2),
        output_per_1m: Decimal::new(1000, 2),
        cached_input_per_1m: Some(Decimal::new(125, 2)),
    };
    let usage = Usage { input: 1234, output: 567, cached_input: 200, reasoning: 64 };
    c.bench_function("Price::cost", |b| b.iter(|| black_box(&price).cost(black_box(&usage))));
    c.bench_function("Price::cost + to_nano_usd", |b| {
        b.iter(|| to_nano_usd(black_box(&price).cost(black_box(&usage))))
    });
}

criterion_group!(benches, chunks, cost);
criterion_main!(benches);
