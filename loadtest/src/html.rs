//! The self-contained HTML report: inline SVG charts (no scripts, no
//! external files) of latency percentiles and throughput over time per
//! region, with spike and partition windows shaded, and the summary tables;
//! for Reservoir, a servers section: reserve latency with every snapshot
//! event drawn as a vertical marker, the leaders' live holds, and each
//! node's RSS over time.

use std::fmt::Write as _;

use crate::report::{Report, ms, pct};
use crate::scenario::WindowKind;

/// Chart size in SVG user units.
const WIDTH: f64 = 920.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;
/// Colour of the vertical event markers.
const MARKER_COLOUR: &str = "#7b3294";
/// Events closer than this many seconds share one marker.
const MARKER_MERGE_S: f64 = 1.5;
/// Most rows of the snapshot-event table.
const EVENT_ROWS_MAX: usize = 200;
/// Line colours, by series index.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// A vertical line across a chart at `x`, labelled at its top, with
/// `title` as its tooltip.
struct Marker {
    x: f64,
    label: String,
    title: String,
}

/// One marker per snapshot event, events within [`MARKER_MERGE_S`] of the
/// first of a group merged into one (the nodes of a group snapshot at about
/// the same moment).
fn snapshot_markers(events: &[crate::servers::SnapshotEvent]) -> Vec<Marker> {
    let mut sorted: Vec<&crate::servers::SnapshotEvent> = events.iter().collect();
    sorted.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    let mut markers: Vec<Marker> = Vec::new();
    let mut group_start = f64::NEG_INFINITY;
    for e in sorted {
        let what = format!(
            "snapshot of node {} at {:.1} s: index {} -> {}{}",
            e.node,
            e.t_s,
            e.previous_index.map_or("-".into(), |i| i.to_string()),
            e.index.map_or("-".into(), |i| i.to_string()),
            match (e.build_ms, e.bytes) {
                (Some(ms), Some(b)) => format!(", build {ms} ms, {} MB", crate::report::mb(Some(b))),
                _ => String::new(),
            }
        );
        match markers.last_mut() {
            Some(m) if e.t_s - group_start <= MARKER_MERGE_S => {
                let _ = write!(m.label, ",{}", e.node);
                let _ = write!(m.title, "\n{what}");
            }
            _ => {
                group_start = e.t_s;
                markers.push(Marker {
                    x: e.t_s,
                    label: format!("snap n{}", e.node),
                    title: what,
                });
            }
        }
    }
    markers
}

/// A "nice" step for about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn line_chart(
    title: &str,
    y_label: &str,
    series: &[Series],
    report: &Report,
    x_max: f64,
    log_y: bool,
    markers: &[Marker],
) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_max = x_max.max(1.0);
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (y_min, y_max) = if log_y {
        let positive: Vec<f64> = ys.filter(|y| *y > 0.0).collect();
        let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = positive.iter().copied().fold(0.0, f64::max);
        if positive.is_empty() {
            (0.1, 10.0)
        } else {
            (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
            )
        }
    } else {
        let hi = ys.fold(0.0, f64::max);
        (0.0, if hi <= 0.0 { 1.0 } else { hi * 1.1 })
    };
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| {
        let f = if log_y {
            (y.max(y_min).log10() - y_min.log10()) / (y_max.log10() - y_min.log10())
        } else {
            (y - y_min) / (y_max - y_min)
        };
        TOP + plot_h * (1.0 - f.clamp(0.0, 1.0))
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Windows first, under the lines.
    for (i, w) in report.windows.iter().filter(|w| w.applied).enumerate() {
        let (fill, label) = match w.kind {
            WindowKind::Spike => ("#ffe9b3", "spike"),
            WindowKind::Partition => ("#f7c6c6", "partition"),
        };
        let x0 = sx(w.start_s.min(x_max));
        let x1 = sx(w.end_s.min(x_max));
        let _ = write!(
            svg,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{fill}" opacity="0.6"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            escape(&format!(
                "{label} {}: {}",
                w.region.as_deref().unwrap_or("all"),
                w.note
            ))
        );
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#555">{label} {}</text>"##,
            x0 + 3.0,
            TOP + 12.0 + 12.0 * i as f64,
            escape(w.region.as_deref().unwrap_or("all"))
        );
    }
    // Axes and grid.
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    let x_step = nice_step(x_max, 10.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{x}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 14.0
        );
        x += x_step;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the start</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 4.0
    );
    let mut ticks = Vec::new();
    if log_y {
        let mut t = y_min;
        while t <= y_max * 1.0001 {
            ticks.push(t);
            t *= 10.0;
        }
    } else {
        let step = nice_step(y_max - y_min, 5.0);
        let mut t = y_min;
        while t <= y_max + 1e-9 {
            ticks.push(t);
            t += step;
        }
    }
    for t in ticks {
        let py = sy(t);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 4.0,
            py + 4.0,
            if t >= 100.0 || t == 0.0 {
                format!("{t:.0}")
            } else {
                format!("{t}")
            }
        );
    }
    let _ = write!(
        svg,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, m) in markers.iter().enumerate() {
        let px = sx(m.x.clamp(0.0, x_max));
        let _ = write!(
            svg,
            r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="{MARKER_COLOUR}" stroke-width="1" stroke-dasharray="4 3"><title>{}</title></line><text x="{:.1}" y="{:.1}" fill="{MARKER_COLOUR}" font-size="9">{}</text>"#,
            TOP + plot_h,
            escape(&m.title),
            px + 2.0,
            TOP + plot_h - 4.0 - 10.0 * (i % 3) as f64,
            escape(&m.label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|(_, y)| !log_y || *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if !points.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let lx = LEFT + plot_w + 10.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            ly - 4.0,
            lx + 20.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn table(rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>");
    for (i, r) in rows.iter().enumerate() {
        out.push_str("<tr>");
        for cell in r {
            if i == 0 {
                let _ = write!(out, "<th>{}</th>", escape(cell));
            } else {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let x_max = report
        .timeline
        .values()
        .filter_map(|rows| rows.last().map(|r| r.t_s as f64 + 1.0))
        .fold(report.load_s, f64::max);
    let mut body = String::new();
    let t = &report.totals;
    let _ = write!(
        body,
        "<h1>{} against {}</h1><p>{}</p><p>{:.1} s of load, seed {}, baseline {}/s per region, {} SKUs. \
         Latency is measured from each request's intended send time (open loop).</p>",
        escape(&report.scenario.name),
        escape(&report.target),
        escape(&report.scenario.description),
        report.load_s,
        report.seed,
        report.scenario.rate_per_region,
        report.scenario.catalog.skus
    );
    let verdict = |ok: bool| if ok { "yes" } else { "<b class=bad>NO</b>" };
    let _ = write!(
        body,
        "<ul><li>oversell: <b class={}>{} units</b> in {} SKUs (stocked {}, demand {}, sold {})</li>\
         <li>audit balanced: {} · settled caught up: {} · settled = confirmed: {}</li>\
         <li>sell-through: {} · local-hit ratio: {} · stranded tokens: max {} during, {} at the end</li>\
         <li>requests {} · late {} · dropped {} · retries {}</li></ul><p class=small>{}</p>",
        if t.oversell_units == 0 { "good" } else { "bad" },
        t.oversell_units,
        t.oversell_skus,
        t.stocked,
        t.demand,
        t.sold,
        verdict(t.audit_balanced),
        verdict(t.settled_caught_up),
        verdict(t.settled_matches_confirmed),
        pct(t.sell_through),
        pct(t.local_hit_ratio),
        t.stranded_max,
        t.stranded_end,
        t.requests,
        t.late,
        t.dropped,
        t.retries,
        escape(&format!("Local hits: {}", t.local_hit_definition))
    );
    body.push_str("<h2>Reserve, per region (every answer)</h2>");
    body.push_str(&table(&report.region_rows()));
    if !report.window_latency.is_empty() {
        body.push_str("<h2>Reserve during each window (every answer)</h2>");
        body.push_str(&table(&report.window_rows()));
    }

    body.push_str("<h2>Over time</h2>");
    let throughput: Vec<Series> = report
        .timeline
        .iter()
        .map(|(region, rows)| Series {
            label: region.clone(),
            points: rows
                .iter()
                .map(|r| (r.t_s as f64 + 0.5, r.reserves as f64))
                .collect(),
        })
        .collect();
    body.push_str(&line_chart(
        "Reserves answered per second, per region",
        "reserves/s",
        &throughput,
        report,
        x_max,
        false,
        &[],
    ));
    let errors: Vec<Series> = report
        .timeline
        .iter()
        .map(|(region, rows)| Series {
            label: region.clone(),
            points: rows
                .iter()
                .map(|r| (r.t_s as f64 + 0.5, r.errors.values().sum::<u64>() as f64))
                .collect(),
        })
        .collect();
    body.push_str(&line_chart(
        "Error answers per second (every operation), per region",
        "errors/s",
        &errors,
        report,
        x_max,
        false,
        &[],
    ));
    for (region, rows) in &report.timeline {
        let pick = |f: fn(&crate::metrics::SecondRow) -> u64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.reserves > 0)
                .map(|r| (r.t_s as f64 + 0.5, f(r) as f64 / 1000.0))
                .collect()
        };
        let series = vec![
            Series {
                label: "p50".into(),
                points: pick(|r| r.reserve_p50_us),
            },
            Series {
                label: "p99".into(),
                points: pick(|r| r.reserve_p99_us),
            },
            Series {
                label: "p99.9".into(),
                points: pick(|r| r.reserve_p999_us),
            },
        ];
        body.push_str(&line_chart(
            &format!("{region}: reserve latency per second (ms, log scale)"),
            "ms",
            &series,
            report,
            x_max,
            true,
            &[],
        ));
    }
    if report.stranded_timeline.iter().any(|(_, n)| *n > 0) {
        let series = vec![Series {
            label: "stranded".into(),
            points: report
                .stranded_timeline
                .iter()
                .map(|(t, n)| (*t as f64, *n as f64))
                .collect(),
        }];
        body.push_str(&line_chart(
            "Stranded tokens",
            "tokens",
            &series,
            report,
            x_max,
            false,
            &[],
        ));
    }

    if let Some(servers) = &report.servers {
        body.push_str(&servers_section(report, servers, x_max));
    }

    let mut rows = vec![
        [
            "op", "region", "outcome", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for l in &report.latency {
        rows.push(vec![
            l.op.name().to_string(),
            l.region.clone(),
            l.outcome.clone(),
            l.latency.count.to_string(),
            ms(l.latency.p50_us),
            ms(l.latency.p90_us),
            ms(l.latency.p99_us),
            ms(l.latency.p999_us),
            ms(l.latency.max_us),
        ]);
    }
    body.push_str("<h2>Every histogram</h2>");
    body.push_str(&table(&rows));

    let mut rows = vec![
        [
            "sku",
            "rank",
            "hot",
            "stocked",
            "demand",
            "sold (seen)",
            "unknown",
            "sold (server)",
            "settled",
            "oversell",
            "sell-through",
            "stranded",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut skus: Vec<_> = report.skus.iter().collect();
    skus.sort_by_key(|s| (std::cmp::Reverse(s.oversell), s.rank));
    for s in skus.iter().take(50) {
        rows.push(vec![
            s.sku.clone(),
            s.rank.to_string(),
            if s.hot { "hot".into() } else { String::new() },
            s.stocked.to_string(),
            s.demand.to_string(),
            s.confirmed_seen.to_string(),
            s.confirmed_unknown.to_string(),
            s.sold_server.to_string(),
            s.settled.to_string(),
            s.oversell.to_string(),
            pct(s.sell_through),
            s.stranded.to_string(),
        ]);
    }
    body.push_str("<h2>SKUs (oversold first, then by popularity; at most 50)</h2>");
    body.push_str(&table(&rows));
    let notes: Vec<&String> = report.server_notes.iter().chain(&report.notes).collect();
    if !notes.is_empty() {
        body.push_str("<h2>Notes</h2><ul>");
        for n in notes {
            let _ = write!(body, "<li>{}</li>", escape(n));
        }
        body.push_str("</ul>");
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} — {}</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}\
         th{{background:#f3f3f3}}td:first-child{{text-align:left}}.bad{{color:#c00}}.good{{color:#080}}\
         .small{{font-size:12px;color:#555}}svg{{display:block;margin:12px 0}}</style></head><body>{body}</body></html>\n",
        escape(&report.scenario.name),
        escape(&report.target)
    )
}

/// The servers section: per-node figures, reserve latency per second with
/// the snapshot events marked, the leaders' live holds, RSS per node, and
/// the events.
fn servers_section(report: &Report, servers: &crate::servers::ServersReport, x_max: f64) -> String {
    use crate::report::mb;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h2>Servers</h2><p class=small>Each node's <code>/status</code>, every {} ms (a node that did not \
         answer within {} ms is missing for that second). RSS in MB of 10<sup>6</sup> bytes; \
         last half = {:.0}-{:.0} s. A snapshot event is a node's snapshot index changing between two \
         samples.</p>",
        servers.interval_ms, servers.timeout_ms, servers.last_half_from_s, servers.last_half_to_s
    );
    let mut rows = vec![
        [
            "node",
            "region",
            "role (last)",
            "samples",
            "missing",
            "RSS first",
            "RSS peak",
            "RSS last",
            "last half min",
            "last half max",
            "RSS from",
            "snapshots",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in &servers.nodes {
        rows.push(vec![
            n.id.to_string(),
            n.region.clone(),
            n.role_last.map_or("", |r| r.as_str()).to_string(),
            (n.samples_answered + n.samples_missing).to_string(),
            n.samples_missing.to_string(),
            mb(n.rss_first_bytes),
            mb(n.rss_peak_bytes),
            mb(n.rss_last_bytes),
            mb(n.rss_last_half_min_bytes),
            mb(n.rss_last_half_max_bytes),
            match n.rss_source {
                Some(crate::servers::RssSource::Status) => "/status".into(),
                Some(crate::servers::RssSource::Proc) => "/proc".into(),
                None => "-".into(),
            },
            n.snapshot_events.to_string(),
        ]);
    }
    body.push_str(&table(&rows));
    let markers = snapshot_markers(&servers.snapshot_events);
    for (region, rows) in &report.timeline {
        let pick = |f: fn(&crate::metrics::SecondRow) -> u64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.reserves > 0)
                .map(|r| (r.t_s as f64 + 0.5, f(r) as f64 / 1000.0))
                .collect()
        };
        let series = vec![
            Series {
                label: "p50".into(),
                points: pick(|r| r.reserve_p50_us),
            },
            Series {
                label: "p99".into(),
                points: pick(|r| r.reserve_p99_us),
            },
            Series {
                label: "p99.9".into(),
                points: pick(|r| r.reserve_p999_us),
            },
            Series {
                label: "max".into(),
                points: pick(|r| r.reserve_max_us),
            },
        ];
        body.push_str(&line_chart(
            &format!("{region}: reserve latency per second, snapshot events marked (ms, log scale)"),
            "ms",
            &series,
            report,
            x_max,
            true,
            &markers,
        ));
    }
    let holds: Vec<Series> = servers
        .leader_holds()
        .into_iter()
        .map(|(region, points)| Series {
            label: region,
            points: points.into_iter().map(|(t, h)| (t, h as f64)).collect(),
        })
        .collect();
    body.push_str(&line_chart(
        "Live holds (the region leader's /status)",
        "holds",
        &holds,
        report,
        x_max,
        false,
        &markers,
    ));
    let rss: Vec<Series> = servers
        .nodes
        .iter()
        .map(|n| Series {
            label: format!("node {} {}", n.id, n.region),
            points: n
                .samples
                .iter()
                .filter_map(|s| s.rss_bytes.map(|b| (s.t_s, b as f64 / 1e6)))
                .collect(),
        })
        .collect();
    body.push_str(&line_chart(
        "RSS per node (MB)",
        "MB",
        &rss,
        report,
        x_max,
        false,
        &markers,
    ));
    if !servers.snapshot_events.is_empty() {
        let mut rows = vec![
            [
                "t (s)",
                "node",
                "region",
                "index before",
                "index",
                "kind",
                "build ms",
                "MB",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for e in servers.snapshot_events.iter().take(EVENT_ROWS_MAX) {
            rows.push(vec![
                format!("{:.1}", e.t_s),
                e.node.to_string(),
                e.region.clone(),
                opt(e.previous_index),
                opt(e.index),
                e.kind.clone().unwrap_or_default(),
                opt(e.build_ms),
                mb(e.bytes),
            ]);
        }
        let _ = write!(
            body,
            "<h3>Snapshot events ({}{})</h3>",
            servers.snapshot_events.len(),
            if servers.snapshot_events.len() > EVENT_ROWS_MAX {
                format!("; the first {EVENT_ROWS_MAX} shown")
            } else {
                String::new()
            }
        );
        body.push_str(&table(&rows));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps are 1, 2 or 5 times a power of ten; text is escaped.
    #[test]
    fn helpers() {
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(nice_step(180.0, 10.0), 20.0);
        assert_eq!(nice_step(0.0, 10.0), 1.0);
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }

    /// A report without servers has no servers section; with one, it draws
    /// the latency (with max), live-holds and RSS charts, each with one
    /// dashed marker per group of snapshot events (two nodes half a second
    /// apart share one), and lists every event.
    #[tokio::test(start_paused = true)]
    async fn servers_section_marks_snapshots() {
        use crate::runner::{self, RunOptions};
        use crate::scenario::{BuiltIn, Scenario};
        use crate::servers::{NodeStatus, Observation, ServerSamples, ServersReport};
        use crate::target::Target;
        use crate::target::reservoir::ClusterNode;
        use crate::target::sim::SimTarget;
        use std::sync::Arc;
        use std::time::Duration;

        let mut scenario = Scenario::built_in(BuiltIn::Soak);
        scenario.duration_s = 3.0;
        scenario.rate_per_region = 20.0;
        scenario.catalog.skus = 5;
        scenario.sessions.hold_ttl_ms = 500;
        let output = runner::run(RunOptions {
            scenario,
            target: Target::Sim(Arc::new(SimTarget::new(Duration::from_millis(1), None))),
            target_name: "sim".into(),
            seed: 1,
            progress: false,
            stop_rx: None,
            check_acknowledged: false,
        })
        .await
        .unwrap();
        let mut report = Report::build(&output);
        let plain = render(&report);
        assert!(!plain.contains("<h2>Servers</h2>") && !plain.contains("stroke-dasharray"));

        let node = |id: u64| ClusterNode {
            id,
            region: "us-east".into(),
            grpc: "127.0.0.1:1".parse().unwrap(),
            peer: None,
            http: None,
            pid: None,
            cmd: Vec::new(),
        };
        let seen = |role: &str, snapshot_index: Option<u64>| Observation {
            status: Ok(NodeStatus {
                node_id: 0,
                role: role.into(),
                snapshot_index,
                holds: 10,
                rss_bytes: Some(50_000_000),
                ..NodeStatus::default()
            }),
            proc_rss_bytes: None,
        };
        let mut samples = ServerSamples::new(&[node(1), node(2)]);
        samples.record(0.0, vec![seen("leader", None), seen("follower", None)]);
        samples.record(1.0, vec![seen("leader", Some(10)), seen("follower", None)]);
        samples.record(1.5, vec![seen("leader", Some(10)), seen("follower", Some(10))]);
        samples.record(2.8, vec![seen("leader", Some(20)), seen("follower", Some(10))]);
        report.servers = Some(ServersReport::build(&samples, report.load_s));
        let html = render(&report);
        assert!(html.contains("<h2>Servers</h2>"));
        assert!(html.contains("snapshot events marked") && html.contains(">max</text>"));
        assert!(html.contains("Live holds") && html.contains("RSS per node (MB)"));
        assert_eq!(
            html.matches("stroke-dasharray").count(),
            2 * 3,
            "two markers in three charts"
        );
        assert!(html.contains(">snap n1,2</text>") && html.contains(">snap n1</text>"));
        assert!(html.contains("<h3>Snapshot events (3)</h3>"));
    }
}
