//! A Grafana dashboard drawn from its JSON against a real Prometheus, for
//! a browser to show. Grafana itself is in none of the registries these
//! machines reach; this takes each panel's queries as Grafana would send
//! them (its variables set: every cluster, a rate interval of 4 scrapes)
//! and lays the answers out by the panels' grid positions: time series
//! as lines, stats as numbers, tables as rows. Colours and styling are
//! its own, the queries and their data are the dashboard's.

use std::{collections::BTreeMap, fmt::Write, io};

use serde_json::Value;

use crate::prometheus::Prometheus;

/// What Grafana puts for the dashboards' variables here.
const RATE_INTERVAL: &str = "4s";
const PALETTE: [&str; 8] = [
    "#1f78c1", "#e0752d", "#3f9b42", "#d43f3a", "#8e63b1", "#8c564b", "#cc5fa4", "#6d7a86",
];

/// One panel and what its queries returned.
pub struct Panel {
    pub title: String,
    /// `timeseries`, `stat` or `table`.
    pub kind: String,
    /// x, y, w, h in the dashboard's 24-column grid.
    pub grid: [u64; 4],
    pub series: Vec<Series>,
}

pub struct Series {
    /// The target's legend with the series' labels in it.
    pub name: String,
    /// The series' labels, for a table's rows.
    pub labels: String,
    pub points: Vec<(f64, f64)>,
}

/// Every panel of `dashboard` with its queries' answers over the last
/// `seconds`; a query Prometheus refuses is an error naming the panel.
pub fn query(dashboard: &Value, prometheus: &Prometheus, seconds: u64) -> io::Result<Vec<Panel>> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        let grid = ["x", "y", "w", "h"].map(|k| panel["gridPos"][k].as_u64().unwrap_or(0));
        let mut series = Vec::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or("")
                .replace("$cluster", ".*")
                .replace("$__rate_interval", RATE_INTERVAL);
            let legend = target["legendFormat"].as_str().unwrap_or("");
            let answers = if target["instant"].as_bool() == Some(true) {
                prometheus.query(&expr).map(|answers| {
                    answers
                        .into_iter()
                        .map(|(labels, value)| (labels, vec![(0.0, value)]))
                        .collect::<Vec<_>>()
                })
            } else {
                prometheus.query_range(&expr, seconds, 2)
            }
            .map_err(|error| io::Error::other(format!("panel {title:?}: {error}")))?;
            for (labels, mut points) in answers {
                // A quantile of no observations is NaN: Grafana leaves a gap.
                points.retain(|(_, value)| value.is_finite());
                if points.is_empty() {
                    continue;
                }
                series.push(Series {
                    name: legend_of(legend, &labels),
                    labels: label_text(&labels),
                    points,
                });
            }
        }
        panels.push(Panel {
            title,
            kind: panel["type"].as_str().unwrap_or("").to_string(),
            grid,
            series,
        });
    }
    Ok(panels)
}

/// `{{label}}` in `legend` replaced by the series' labels; the labels
/// themselves when there is no legend.
fn legend_of(legend: &str, labels: &Value) -> String {
    if legend.is_empty() {
        return label_text(labels);
    }
    let mut name = legend.to_string();
    for (key, value) in labels.as_object().into_iter().flatten() {
        name = name.replace(&format!("{{{{{key}}}}}"), value.as_str().unwrap_or(""));
    }
    name
}

fn label_text(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| *key != "__name__")
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        "value".into()
    } else {
        pairs.join(", ")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn number(value: f64) -> String {
    match value.abs() {
        v if v.fract() == 0.0 && v < 1e15 => format!("{value:.0}"),
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.4}"),
    }
}

fn last(series: &Series) -> Option<f64> {
    series.points.last().map(|(_, value)| *value)
}

/// A page of `panels` under `title`.
pub fn html(title: &str, panels: &[Panel]) -> String {
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body {{ margin: 0; background: #111217; color: #ccccdc; font: 12px system-ui, sans-serif; }}\
         h1 {{ font-size: 16px; margin: 0; padding: 10px 14px; }}\
         .grid {{ display: grid; grid-template-columns: repeat(24, 1fr); grid-auto-rows: 30px; gap: 6px; padding: 0 10px 10px; }}\
         .panel {{ background: #181b1f; border: 1px solid #2c3235; border-radius: 3px; padding: 6px 8px; overflow: hidden; display: flex; flex-direction: column; }}\
         .panel h2 {{ font-size: 12px; margin: 0 0 4px; color: #d8d9da; }}\
         svg {{ flex: 1; min-height: 0; width: 100%; }}\
         .legend {{ display: flex; flex-wrap: wrap; gap: 2px 10px; }}\
         .stat {{ font-size: 26px; font-weight: 500; color: #73bf69; }}\
         .stat small {{ font-size: 11px; color: #ccccdc; }}\
         table {{ border-collapse: collapse; }} td, th {{ padding: 1px 8px; border-bottom: 1px solid #2c3235; text-align: left; }}\
         .empty {{ color: #8e8e8e; }}\
         </style></head><body><h1>{title}</h1><div class=\"grid\">",
        title = escape(title)
    );
    for panel in panels {
        let [x, y, w, h] = panel.grid;
        let _ = write!(
            page,
            "<div class=\"panel\" data-panel=\"{}\" data-series=\"{}\" style=\"grid-column: {} / span {w}; grid-row: {} / span {h}\"><h2>{}</h2>",
            escape(&panel.title),
            panel.series.len(),
            x + 1,
            y + 1,
            escape(&panel.title)
        );
        if panel.series.is_empty() {
            page.push_str("<div class=\"empty\">No data</div>");
        } else {
            match panel.kind.as_str() {
                "stat" => page.push_str(&stat(panel)),
                "table" => page.push_str(&table(panel)),
                _ => page.push_str(&timeseries(panel)),
            }
        }
        page.push_str("</div>");
    }
    page.push_str("</div></body></html>");
    page
}

fn stat(panel: &Panel) -> String {
    panel
        .series
        .iter()
        .filter_map(|series| {
            let value = last(series)?;
            let name = if panel.series.len() > 1 {
                format!(" <small>{}</small>", escape(&series.name))
            } else {
                String::new()
            };
            Some(format!("<div class=\"stat\">{}{name}</div>", number(value)))
        })
        .collect()
}

/// One row per label set, one column per target (Grafana's merge).
fn table(panel: &Panel) -> String {
    let mut columns: Vec<&str> = Vec::new();
    let mut rows: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for series in &panel.series {
        let column = if panel.series.iter().all(|s| s.name == s.labels) {
            "value"
        } else {
            series.name.as_str()
        };
        if !columns.contains(&column) {
            columns.push(column);
        }
        if let Some(value) = last(series) {
            rows.entry(&series.labels)
                .or_default()
                .insert(column, value);
        }
    }
    let mut text = String::from("<table><tr><th></th>");
    for column in &columns {
        let _ = write!(text, "<th>{}</th>", escape(column));
    }
    text.push_str("</tr>");
    for (labels, values) in rows {
        let _ = write!(text, "<tr><td>{}</td>", escape(labels));
        for column in &columns {
            let value = values.get(column).map_or(String::new(), |v| number(*v));
            let _ = write!(text, "<td>{value}</td>");
        }
        text.push_str("</tr>");
    }
    text + "</table>"
}

fn timeseries(panel: &Panel) -> String {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let (t0, t1) = points().fold((f64::MAX, f64::MIN), |(a, b), (t, _)| {
        (a.min(*t), b.max(*t))
    });
    let (v0, v1) = points().fold((0.0_f64, f64::MIN), |(a, b), (_, v)| (a.min(*v), b.max(*v)));
    let (span_t, span_v) = ((t1 - t0).max(1.0), (v1 - v0).max(1e-9));
    let (width, height) = (600.0, 150.0);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {height}\" preserveAspectRatio=\"none\">\
         <text x=\"2\" y=\"10\" fill=\"#8e8e8e\" font-size=\"10\">{}</text>",
        number(v1)
    );
    let mut legend = String::from("<div class=\"legend\">");
    for (i, series) in panel.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let line: Vec<String> = series
            .points
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    (t - t0) / span_t * width,
                    height - (v - v0) / span_v * (height - 14.0)
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" vector-effect=\"non-scaling-stroke\" points=\"{}\"/>",
            line.join(" ")
        );
        let _ = write!(
            legend,
            "<span><span style=\"color:{colour}\">&#9644;</span> {} {}</span>",
            escape(&series.name),
            last(series).map_or(String::new(), number)
        );
    }
    svg + "</svg>" + &legend + "</div>"
}
