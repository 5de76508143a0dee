//! Server-rendered SVG charts for the admin console: bars per hour and horizontal bars for a
//! table of counts.
//!
//! The console is served under a strict Content-Security-Policy and loads nothing from
//! elsewhere, so a chart is plain SVG text built here: no script, no `style` attribute or
//! element (CSP would block them), only presentation attributes. Every text that ends up in
//! the SVG goes through [`escape`], labels included, though today they are our own words.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Bar colours, one per series in turn; readable on white and told apart in grey too.
const PALETTE: [&str; 6] = ["#2b6cb0", "#dd6b20", "#c53030", "#2f855a", "#6b46c1", "#718096"];
/// The colour of axes, grid and text.
const INK: &str = "#4a5568";
const FONT: &str = "font-family=\"sans-serif\"";

/// Room around the plot: the y labels on the left, the title above, the x labels and the
/// legend below.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 40.0;

/// One series of a chart: a label for the legend and (start of the hour in unix seconds,
/// count) points, as `sealmail_metrics::History::series` gives them.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(i64, u64)],
}

/// Text in an SVG is escaped as in the autoconfig documents (XML content and attributes).
pub use crate::autoconfig::escape;

/// The opening of an SVG of the given size, named by `title` for screen readers.
fn open(out: &mut String, title: &str, width: u32, height: u32) {
    let title = escape(title);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\"><title>{title}</title>\
         <text x=\"4\" y=\"16\" font-size=\"13\" font-weight=\"bold\" fill=\"{INK}\" {FONT}>{title}</text>"
    );
}

fn no_data(out: &mut String, x: f64, y: f64) {
    let _ = write!(
        out,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"{INK}\" {FONT}>no data yet</text>"
    );
}

/// The share `value / max` of `length`, in 0..=length; 0 when `max` is 0. f64 holds any u64
/// closely enough for a pixel, and the ratio of two finite non-negatives is never NaN.
fn scale(value: u64, max: u64, length: f64) -> f64 {
    if max == 0 {
        return 0.0;
    }
    ((value as f64 / max as f64) * length).clamp(0.0, length.max(0.0))
}

/// Days since 1970-01-01 to (month, day), UTC (Howard Hinnant's `civil_from_days`).
fn month_day(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (month, day)
}

/// `HH:00` of an hour's start, UTC.
fn hour_label(unix: i64) -> String {
    format!("{:02}:00", unix.div_euclid(3600).rem_euclid(24))
}

/// `MM-DD` of a day, UTC.
fn day_label(unix: i64) -> String {
    let (month, day) = month_day(unix.div_euclid(86_400));
    format!("{month:02}-{day:02}")
}

/// A bar chart of counts per hour: for each hour, one bar per series side by side, in the
/// palette's colours, with a legend. The x axis says `HH:00` (UTC) every few hours for a day
/// or less, and `MM-DD` at each midnight (UTC) for longer; the y axis says 0 and the largest
/// count. Hours are those of all series together, in order; with none, or only zeros, the
/// chart says "no data yet".
pub fn bar_chart(title: &str, series: &[Series<'_>], width: u32, height: u32) -> String {
    let mut out = String::new();
    open(&mut out, title, width, height);
    let plot_w = (f64::from(width) - LEFT - RIGHT).max(0.0);
    let plot_h = (f64::from(height) - TOP - BOTTOM).max(0.0);
    let bottom = TOP + plot_h;

    let hours: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(hour, _)| *hour))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, n)| *n))
        .max()
        .unwrap_or(0);

    // Axes and the y labels.
    let _ = write!(
        out,
        "<line x1=\"{LEFT:.1}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\" stroke=\"{INK}\" stroke-width=\"1\"/>\
         <line x1=\"{LEFT:.1}\" y1=\"{TOP:.1}\" x2=\"{LEFT:.1}\" y2=\"{bottom:.1}\" stroke=\"{INK}\" stroke-width=\"1\"/>\
         <text x=\"{:.1}\" y=\"{bottom:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"{INK}\" {FONT}>0</text>",
        LEFT + plot_w,
        LEFT - 4.0,
    );
    if max > 0 {
        let _ = write!(
            out,
            "<line x1=\"{LEFT:.1}\" y1=\"{TOP:.1}\" x2=\"{:.1}\" y2=\"{TOP:.1}\" stroke=\"#e2e8f0\" stroke-width=\"1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"{INK}\" {FONT}>{max}</text>",
            LEFT + plot_w,
            LEFT - 4.0,
            TOP + 8.0,
        );
    }

    if !hours.is_empty() {
        let slot = plot_w / hours.len() as f64;
        let groups = series.len().max(1) as f64;
        let bar = (slot * 0.8 / groups).max(0.0);
        let pad = slot * 0.1;
        let long = hours.len() > 48;
        // A label every few hours: at most about eight along the axis.
        let step = hours.len().div_ceil(8).max(1);
        for (i, hour) in hours.iter().enumerate() {
            let x = LEFT + slot * i as f64;
            let label = if long {
                (hour.rem_euclid(86_400) == 0).then(|| day_label(*hour))
            } else {
                (i % step == 0).then(|| hour_label(*hour))
            };
            if let Some(label) = label {
                let _ = write!(
                    out,
                    "<line x1=\"{x:.1}\" y1=\"{bottom:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{INK}\" stroke-width=\"1\"/>\
                     <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"{INK}\" {FONT}>{label}</text>",
                    bottom + 3.0,
                    bottom + 14.0,
                );
            }
        }
        for (k, s) in series.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let label = escape(s.label);
            for (hour, value) in s.points {
                let Ok(i) = hours.binary_search(hour) else {
                    continue;
                };
                let h = scale(*value, max, plot_h);
                let x = LEFT + slot * i as f64 + pad + bar * k as f64;
                let when = format!("{} {}", day_label(*hour), hour_label(*hour));
                let _ = write!(
                    out,
                    "<rect class=\"bar\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar:.2}\" height=\"{h:.2}\" fill=\"{colour}\">\
                     <title>{when} UTC, {label}: {value}</title></rect>",
                    bottom - h,
                );
            }
        }
    }
    if max == 0 {
        no_data(&mut out, LEFT + plot_w / 2.0, TOP + plot_h / 2.0);
    }

    // The legend, in a row under the x labels.
    let y = f64::from(height) - 8.0;
    let mut x = LEFT;
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"11\" fill=\"{INK}\" {FONT}>{}</text>",
            y - 9.0,
            x + 14.0,
            escape(s.label),
        );
        // Roughly the label's width at this size, so the next entry does not overlap it.
        x += 24.0 + 6.5 * s.label.chars().count() as f64;
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars for a table of counts (TLS versions, cipher suites): one row per entry in
/// the order given, its label and count above a bar as long as its share of the largest
/// count. With no rows, or only zeros, the chart says "no data yet".
pub fn table_bars(title: &str, rows: &[(String, u64)], width: u32) -> String {
    const ROW: f64 = 30.0;
    let rows_h = ROW * rows.len().max(1) as f64;
    let height_f = (TOP + 8.0 + rows_h + 8.0).min(f64::from(u32::MAX));
    // In range: clamped just above.
    let height = height_f as u32;
    let mut out = String::new();
    open(&mut out, title, width, height);
    let left = 4.0;
    let length = (f64::from(width) - left - RIGHT).max(0.0);
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = TOP + 8.0 + ROW * i as f64;
        let w = scale(*value, max, length);
        let label = escape(label);
        let _ = write!(
            out,
            "<text x=\"{left:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{INK}\" {FONT}>{label}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"{INK}\" {FONT}>{value}</text>\
             <rect class=\"bar\" x=\"{left:.1}\" y=\"{:.1}\" width=\"{w:.2}\" height=\"10\" fill=\"{}\">\
             <title>{label}: {value}</title></rect>",
            y + 10.0,
            left + length,
            y + 10.0,
            y + 14.0,
            PALETTE[0],
        );
    }
    if max == 0 {
        no_data(&mut out, f64::from(width) / 2.0, TOP + 8.0 + rows_h / 2.0);
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

    fn hours(n: usize, value: impl Fn(usize) -> u64) -> Vec<(i64, u64)> {
        (0..n).map(|i| (T0 + 3600 * i as i64, value(i))).collect()
    }

    fn bars(svg: &str) -> usize {
        svg.matches("<rect class=\"bar\"").count()
    }

    /// Every number in a coordinate or size attribute parses and is finite.
    fn numbers_are_finite(svg: &str) -> bool {
        // With the space before: `viewBox="` ends as `x="` does.
        [
            " x=\"",
            " y=\"",
            " width=\"",
            " height=\"",
            " x1=\"",
            " x2=\"",
            " y1=\"",
            " y2=\"",
        ]
        .iter()
        .all(|attr| {
            svg.split(attr).skip(1).all(|rest| {
                rest.split('"')
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
        })
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(escape("a&b \"c\" 'd'"), "a&amp;b &quot;c&quot; &#39;d&#39;");
        let points = hours(3, |i| i as u64);
        let evil = "<script>alert(1)</script>";
        let chart = bar_chart(
            evil,
            &[Series {
                label: evil,
                points: &points,
            }],
            600,
            200,
        );
        assert!(!chart.contains("<script"), "{chart}");
        assert!(chart.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>"));
        let table = table_bars(evil, &[(evil.to_string(), 3)], 400);
        assert!(!table.contains("<script"), "{table}");
    }

    #[test]
    fn one_bar_per_data_point() {
        let a = hours(24, |i| i as u64 * 3);
        let b = hours(24, |i| (i % 5) as u64);
        let chart = bar_chart(
            "Messages",
            &[
                Series {
                    label: "in",
                    points: &a,
                },
                Series {
                    label: "out",
                    points: &b,
                },
            ],
            720,
            240,
        );
        assert_eq!(bars(&chart), 48);
        assert!(chart.starts_with("<svg ") && chart.ends_with("</svg>"));
        assert!(chart.contains("role=\"img\""));
        assert!(chart.contains("<title>Messages</title>"));
        assert!(chart.contains(">00:00<") && chart.contains(">03:00<"), "{chart}");
        assert!(
            chart.contains(">69<"),
            "the y axis says the largest count: {chart}"
        );
        assert!(!chart.contains("no data yet"));
        assert!(numbers_are_finite(&chart), "{chart}");

        let week = hours(168, |i| i as u64);
        let chart = bar_chart(
            "Week",
            &[Series {
                label: "in",
                points: &week,
            }],
            720,
            240,
        );
        assert_eq!(bars(&chart), 168);
        assert!(chart.contains(">01-01<") && chart.contains(">01-07<"), "{chart}");
        assert!(!chart.contains(":00<"), "days, not hours, on a week's axis");

        let rows = vec![("TLSv1_3".to_string(), 10), ("TLSv1_2".to_string(), 2)];
        assert_eq!(bars(&table_bars("TLS versions", &rows, 400)), 2);
    }

    #[test]
    fn no_style_anywhere() {
        let a = hours(24, |i| i as u64);
        for svg in [
            bar_chart(
                "t",
                &[Series {
                    label: "l",
                    points: &a,
                }],
                600,
                200,
            ),
            bar_chart("t", &[], 600, 200),
            table_bars("t", &[("x".to_string(), 1)], 300),
            table_bars("t", &[], 300),
        ] {
            assert!(!svg.contains("style"), "{svg}");
        }
    }

    #[test]
    fn empty_data_says_so() {
        let none: [(i64, u64); 0] = [];
        let zeros = hours(24, |_| 0);
        for chart in [
            bar_chart("Logins", &[], 600, 200),
            bar_chart(
                "Logins",
                &[Series {
                    label: "ok",
                    points: &none,
                }],
                600,
                200,
            ),
            bar_chart(
                "Logins",
                &[Series {
                    label: "ok",
                    points: &zeros,
                }],
                600,
                200,
            ),
            table_bars("TLS", &[], 300),
            table_bars("TLS", &[("TLSv1_3".to_string(), 0)], 300),
        ] {
            assert!(chart.contains("no data yet"), "{chart}");
            assert!(numbers_are_finite(&chart), "{chart}");
        }
        // Degenerate sizes draw nothing sensible but nothing broken either.
        let a = hours(5, |_| 1);
        let tiny = bar_chart(
            "t",
            &[Series {
                label: "l",
                points: &a,
            }],
            0,
            0,
        );
        assert!(numbers_are_finite(&tiny), "{tiny}");
        assert!(numbers_are_finite(&table_bars("t", &[("a".to_string(), 1)], 0)));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let a = hours(24, |i| if i == 3 { u64::MAX } else { u64::MAX - i as u64 });
        let b = hours(24, |_| 1);
        let chart = bar_chart(
            "Huge",
            &[
                Series {
                    label: "a",
                    points: &a,
                },
                Series {
                    label: "b",
                    points: &b,
                },
            ],
            600,
            200,
        );
        assert_eq!(bars(&chart), 48);
        assert!(chart.contains(&format!(">{}<", u64::MAX)));
        assert!(numbers_are_finite(&chart), "{chart}");
        let table = table_bars("Huge", &[("a".to_string(), u64::MAX), ("b".to_string(), 1)], 300);
        assert!(numbers_are_finite(&table), "{table}");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(day_label(T0), "01-01");
        assert_eq!(day_label(T0 - 1), "12-31");
        assert_eq!(day_label(951_782_400), "02-29"); // 2000-02-29
        assert_eq!(hour_label(T0 + 13 * 3600 + 59), "13:00");
        assert_eq!(day_label(0), "01-01");
        assert_eq!(hour_label(-3600), "23:00");
    }
}
