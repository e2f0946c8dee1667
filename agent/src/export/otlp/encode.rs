//! [`Collected`] points to an OTLP `ExportMetricsServiceRequest`.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::export::config::Temporality;
use crate::export::metrics::{self, Kind, Scale, explicit_bounds, scaled};
use crate::export::model::{Collected, Point, Value};

fn attributes(p: &Point) -> Vec<KeyValue> {
    p.attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: (*k).to_string(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.clone())) }),
            ..Default::default()
        })
        .collect()
}

fn number(v: u128, scale: Scale) -> number_data_point::Value {
    match scale {
        Scale::Unit => number_data_point::Value::AsInt(v.min(i64::MAX as u128) as i64),
        Scale::NanosToSeconds => number_data_point::Value::AsDouble(scaled(v, scale)),
    }
}

pub fn request(c: &Collected, temporality: Temporality, resource: &Resource) -> ExportMetricsServiceRequest {
    let temporality = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative,
        Temporality::Delta => AggregationTemporality::Delta,
    } as i32;
    let mut out = Vec::new();
    for def in metrics::ALL {
        let points: Vec<&Point> = c.points.iter().filter(|p| p.metric.name == def.name).collect();
        if points.is_empty() {
            continue;
        }
        let data = match def.kind {
            Kind::Histogram => {
                let range = c.ranges.for_scale(def.scale);
                let bounds = explicit_bounds(def.scale, range);
                Data::Histogram(Histogram {
                    aggregation_temporality: temporality,
                    data_points: points
                        .iter()
                        .filter_map(|p| match &p.value {
                            Value::Hist(h) => Some(HistogramDataPoint {
                                attributes: attributes(p),
                                start_time_unix_nano: p.start_ns,
                                time_unix_nano: c.time_ns,
                                count: h.count(),
                                sum: Some(scaled(h.sum, def.scale)),
                                bucket_counts: range.counts(&h.slots),
                                explicit_bounds: bounds.clone(),
                                ..Default::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                })
            }
            Kind::Counter => Data::Sum(Sum {
                aggregation_temporality: temporality,
                is_monotonic: true,
                data_points: number_points(&points, c.time_ns, def.scale),
            }),
            Kind::Gauge => Data::Gauge(Gauge { data_points: number_points(&points, c.time_ns, def.scale) }),
        };
        out.push(Metric {
            name: def.name.to_string(),
            description: def.description.to_string(),
            unit: def.unit.to_string(),
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "blkio-agent".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics: out,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn number_points(points: &[&Point], time_ns: u64, scale: Scale) -> Vec<NumberDataPoint> {
    points
        .iter()
        .filter_map(|p| {
            let (v, start) = match p.value {
                Value::Counter(v) => (v, p.start_ns),
                // Gauges have no start time.
                Value::Gauge(v) => (v, 0),
                Value::Hist(_) => return None,
            };
            Some(NumberDataPoint {
                attributes: attributes(p),
                start_time_unix_nano: start,
                time_unix_nano: time_ns,
                value: Some(number(v, scale)),
                ..Default::default()
            })
        })
        .collect()
}

/// Number of data points in a request (for logs and partial-success accounting).
pub fn point_count(req: &ExportMetricsServiceRequest) -> usize {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::model::{AgentCounters, PeakWindow, Totals, tests::interval};

    #[test]
    fn histogram_points_carry_exact_buckets_and_bounds() {
        let mut t = Totals::default();
        t.add(&interval(1000.0, 5.0, &[(0, 1), (4, 10), (31, 2)], 2_500_000_000));
        let req = request(
            &t.collect(&AgentCounters::default(), PeakWindow::Otlp),
            Temporality::Cumulative,
            &Resource::default(),
        );
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let m = metrics.iter().find(|m| m.name == "blkio.request.duration").unwrap();
        assert_eq!(m.unit, "s");
        let Some(Data::Histogram(h)) = &m.data else { panic!() };
        assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let p = &h.data_points[0];
        assert_eq!(p.count, 13);
        assert_eq!(p.sum, Some(2.5));
        // Default --histogram-max (16 s): 24 bounds up to 16.777216 s, then the overflow bucket
        // holding the kernel's slots 24..=31.
        assert_eq!(p.bucket_counts.len(), 25);
        assert_eq!(p.explicit_bounds.len(), 24);
        assert_eq!((p.bucket_counts[0], p.bucket_counts[4], p.bucket_counts[24]), (1, 10, 2));
        assert_eq!(p.explicit_bounds[4], 32e-6);
        assert_eq!(p.explicit_bounds[23], 16.777216);
        assert_eq!(p.start_time_unix_nano, 995_000_000_000);
        assert_eq!(p.time_unix_nano, 1_000_000_000_000);
        let size = metrics.iter().find(|m| m.name == "blkio.request.size").unwrap();
        assert_eq!(size.unit, "By");
        let Some(Data::Histogram(h)) = &size.data else { panic!() };
        assert_eq!(h.data_points[0].sum, Some(13.0 * 4096.0));
        // Sizes: first bound 511 B (slots 0..=8), so slot 12 is bucket 4.
        assert_eq!(h.data_points[0].explicit_bounds[4], 8191.0);
        assert_eq!(h.data_points[0].bucket_counts[4], 13);
        let ops = metrics.iter().find(|m| m.name == "system.disk.operations").unwrap();
        let Some(Data::Sum(s)) = &ops.data else { panic!() };
        assert!(s.is_monotonic);
        assert_eq!(s.data_points[0].value, Some(number_data_point::Value::AsInt(13)));
        assert!(point_count(&req) > 10);
    }
}
