//! A lock-free Prometheus histogram: one atomic counter per bucket and the sum as atomic f64 bits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::{EncodeLabelSet, MetricEncoder, NoLabelSet};

#[derive(Debug)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Non-cumulative counts; the last cell is the +Inf bucket.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram::with_extra(bounds, &[])
    }

    /// Buckets `base` plus `extra` boundaries (SLA thresholds), sorted, without duplicates.
    pub fn with_extra(base: &[f64], extra: &[f64]) -> Histogram {
        let mut bounds: Vec<f64> = base.iter().chain(extra).copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        Histogram {
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds: bounds.into(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Observations ≤ `v`: exact when `v` is a bucket boundary (SLA thresholds always are).
    pub fn count_le(&self, v: f64) -> u64 {
        self.bounds.iter().zip(self.counts.iter()).take_while(|(b, _)| **b <= v).map(|(_, c)| c.load(Relaxed)).sum()
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    pub fn observe(&self, v: f64) {
        // Prometheus buckets are `le`: a value equal to a bound belongs to that bound's bucket.
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Relaxed))
    }

    /// Non-cumulative (upper bound, count) pairs including +Inf, as the encoder wants them.
    fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().map(|c| c.load(Relaxed))).collect()
    }

    pub fn encode(&self, m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet) -> std::fmt::Result {
        let buckets = self.buckets();
        let count = buckets.iter().map(|b| b.1).sum();
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    /// Encodes only when something was observed (for label combinations that may never occur).
    pub fn encode_if_used(&self, m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet) -> std::fmt::Result {
        if self.count() == 0 { Ok(()) } else { self.encode(m, labels) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_le_and_sum_adds() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 1.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.buckets(), vec![(0.1, 2), (1.0, 2), (f64::INFINITY, 1)]);
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 4.65).abs() < 1e-12);
        assert_eq!((h.count_le(0.1), h.count_le(1.0), h.count_le(0.05)), (2, 4, 0));
    }

    #[test]
    fn extra_boundaries_join_the_list() {
        let h = Histogram::with_extra(&[0.1, 1.0, 5.0], &[2.0, 1.0]);
        assert_eq!(h.bounds(), &[0.1, 1.0, 2.0, 5.0]);
    }
}
