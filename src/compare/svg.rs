//! A horizontal bar chart as hand-written SVG text: one labelled bar per row with its value
//! printed, an optional reference line (1× for ratios), a linear or logarithmic axis with ticks,
//! and axis labels.

use std::fmt::Write as _;

/// Values spanning more than this factor are drawn on a log scale.
pub(crate) const LOG_SPAN: f64 = 20.0;

/// One bar.
pub(crate) struct Bar {
    /// Row label (left of the bar).
    pub(crate) label: String,
    /// The value (positive; others are drawn as empty rows labelled `n/a`).
    pub(crate) value: f64,
    /// Whether it is a secondary row (boot, wall), drawn in another colour.
    pub(crate) secondary: bool,
}

/// What the chart shows.
pub(crate) struct Chart {
    /// Title line.
    pub(crate) title: String,
    /// A smaller line under the title.
    pub(crate) subtitle: String,
    /// Label of the value axis (the scale is appended).
    pub(crate) x_label: String,
    /// Label of the category axis.
    pub(crate) y_label: String,
    /// Where to draw a reference line (1.0 for ratios).
    pub(crate) reference: Option<f64>,
    /// How a value is printed at the end of its bar.
    pub(crate) unit: Unit,
    /// The bars, top to bottom.
    pub(crate) bars: Vec<Bar>,
}

/// How values print.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// `12.3×`.
    Times,
    /// `1.23 s`.
    Seconds,
}

const WIDTH: f64 = 880.0;
const LEFT: f64 = 210.0;
const RIGHT: f64 = 90.0;
const TOP: f64 = 72.0;
const ROW: f64 = 30.0;
const BAR: f64 = 20.0;
const BOTTOM: f64 = 64.0;

/// Three significant digits, without a needless exponent.
pub(crate) fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

fn value_text(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Times => format!("{}×", sig3(v)),
        Unit::Seconds => format!("{} s", sig3(v)),
    }
}

/// The reference line's label: `1×`, not `1.00×`.
fn reference_text(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Times => format!("{}×", tick_label(v)),
        Unit::Seconds => format!("{} s", tick_label(v)),
    }
}

/// XML text/attribute escaping.
pub(crate) fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// The value axis: linear from 0, or log between whole decades.
#[derive(Debug, PartialEq)]
pub(crate) enum Scale {
    /// 0 ..= hi, ticks every `step`.
    Linear {
        /// Upper end.
        hi: f64,
        /// Tick spacing.
        step: f64,
    },
    /// 10^lo ..= 10^hi (decade exponents).
    Log {
        /// Lowest decade exponent.
        lo: i32,
        /// Highest decade exponent.
        hi: i32,
    },
}

impl Scale {
    /// The scale for `values` (positive finite ones count) and the reference value.
    pub(crate) fn fit(values: &[f64], reference: Option<f64>) -> Scale {
        let mut vs: Vec<f64> = values
            .iter()
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        vs.extend(reference);
        let max = vs.iter().copied().fold(0.0, f64::max);
        let min = vs.iter().copied().fold(f64::INFINITY, f64::min);
        if vs.is_empty() || max <= 0.0 {
            return Scale::Linear { hi: 1.0, step: 0.2 };
        }
        if max / min > LOG_SPAN {
            let lo = min.log10().floor() as i32;
            let hi = (max.log10().ceil() as i32).max(lo + 1);
            return Scale::Log { lo, hi };
        }
        let step = nice_step(max * 1.05 / 5.0);
        let hi = (max * 1.05 / step).ceil() * step;
        Scale::Linear { hi, step }
    }

    /// 0..=1 position of `v` along the axis (clamped).
    fn pos(&self, v: f64) -> f64 {
        let p = match *self {
            Scale::Linear { hi, .. } => v / hi,
            Scale::Log { lo, hi } => {
                if v <= 0.0 {
                    0.0
                } else {
                    (v.log10() - lo as f64) / (hi - lo) as f64
                }
            }
        };
        p.clamp(0.0, 1.0)
    }

    /// Tick values with their labels.
    fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { hi, step } => {
                let n = (hi / step).round() as usize;
                (0..=n).map(|i| i as f64 * step).collect()
            }
            Scale::Log { lo, hi } => (lo..=hi).map(|e| 10f64.powi(e)).collect(),
        }
    }

    fn is_log(&self) -> bool {
        matches!(self, Scale::Log { .. })
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw * 0.999_999 {
            return m * p;
        }
    }
    10.0 * p
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (0.001..1e6).contains(&v.abs()) {
        // Trim trailing zeros: 0.5, 2, 10, 0.001.
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:e}")
    }
}

impl Chart {
    /// The SVG document.
    pub(crate) fn render(&self) -> String {
        let values: Vec<f64> = self.bars.iter().map(|b| b.value).collect();
        let scale = Scale::fit(&values, self.reference);
        let rows = self.bars.len().max(1) as f64;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = rows * ROW;
        let height = TOP + plot_h + BOTTOM;
        let x = |v: f64| LEFT + scale.pos(v) * plot_w;
        let mut s = String::new();
        s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
             viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"13\">"
        )
        .ok();
        writeln!(s, "<title>{}</title>", xml(&self.title)).ok();
        writeln!(
            s,
            "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>"
        )
        .ok();
        writeln!(
            s,
            "<text class=\"title\" x=\"{}\" y=\"26\" text-anchor=\"middle\" font-size=\"17\" \
             font-weight=\"bold\">{}</text>",
            WIDTH / 2.0,
            xml(&self.title)
        )
        .ok();
        writeln!(
            s,
            "<text class=\"subtitle\" x=\"{}\" y=\"48\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            WIDTH / 2.0,
            xml(&self.subtitle)
        )
        .ok();
        // Grid and tick labels.
        let axis_y = TOP + plot_h;
        for t in scale.ticks() {
            let tx = x(t);
            writeln!(
                s,
                "<line class=\"grid\" x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{axis_y}\" \
                 stroke=\"#ddd\"/>"
            )
            .ok();
            writeln!(
                s,
                "<text class=\"tick\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
                 fill=\"#333\">{}</text>",
                axis_y + 16.0,
                xml(&tick_label(t))
            )
            .ok();
        }
        // Bars.
        for (i, b) in self.bars.iter().enumerate() {
            let y = TOP + i as f64 * ROW + (ROW - BAR) / 2.0;
            let mid = y + BAR / 2.0 + 4.5;
            writeln!(
                s,
                "<text class=\"label\" x=\"{:.1}\" y=\"{mid:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 8.0,
                xml(&b.label)
            )
            .ok();
            if !(b.value.is_finite() && b.value > 0.0) {
                writeln!(
                    s,
                    "<text class=\"value\" x=\"{:.1}\" y=\"{mid:.1}\" fill=\"#888\">n/a</text>",
                    LEFT + 4.0
                )
                .ok();
                continue;
            }
            let w = (x(b.value) - LEFT).max(1.0);
            let fill = if b.secondary { "#9aa5b1" } else { "#3b6fb6" };
            let v = value_text(self.unit, b.value);
            writeln!(
                s,
                "<rect class=\"bar\" data-label=\"{}\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{w:.1}\" \
                 height=\"{BAR}\" fill=\"{fill}\"><title>{}: {}</title></rect>",
                xml(&b.label),
                xml(&b.label),
                xml(&v)
            )
            .ok();
            writeln!(
                s,
                "<text class=\"value\" x=\"{:.1}\" y=\"{mid:.1}\" font-weight=\"bold\">{}</text>",
                LEFT + w + 5.0,
                xml(&v)
            )
            .ok();
        }
        if let Some(r) = self.reference {
            let rx = x(r);
            writeln!(
                s,
                "<line class=\"reference\" x1=\"{rx:.1}\" y1=\"{:.1}\" x2=\"{rx:.1}\" \
                 y2=\"{axis_y}\" stroke=\"#c0392b\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>",
                TOP - 8.0
            )
            .ok();
            writeln!(
                s,
                "<text class=\"reference-label\" x=\"{rx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
                 fill=\"#c0392b\">{}</text>",
                TOP - 11.0,
                xml(&reference_text(self.unit, r))
            )
            .ok();
        }
        // Axes and their labels.
        writeln!(
            s,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{axis_y}\" x2=\"{:.1}\" y2=\"{axis_y}\" \
             stroke=\"#333\"/>",
            LEFT + plot_w
        )
        .ok();
        writeln!(
            s,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{axis_y}\" \
             stroke=\"#333\"/>"
        )
        .ok();
        let scale_name = if scale.is_log() {
            "log scale"
        } else {
            "linear scale"
        };
        writeln!(
            s,
            "<text class=\"x-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} ({scale_name})</text>",
            LEFT + plot_w / 2.0,
            axis_y + 42.0,
            xml(&self.x_label)
        )
        .ok();
        writeln!(
            s,
            "<text class=\"y-label\" x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 18 {:.1})\">{}</text>",
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            xml(&self.y_label)
        )
        .ok();
        if self.bars.is_empty() {
            writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">no data</text>",
                LEFT + plot_w / 2.0,
                TOP + ROW / 2.0 + 4.5
            )
            .ok();
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(values: &[f64], reference: Option<f64>) -> Chart {
        Chart {
            title: "t <&> \"q\"".into(),
            subtitle: "s".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            reference,
            unit: Unit::Times,
            bars: values
                .iter()
                .enumerate()
                .map(|(i, &v)| Bar {
                    label: format!("w{i}"),
                    value: v,
                    secondary: i == 0,
                })
                .collect(),
        }
    }

    #[test]
    fn scales() {
        assert_eq!(
            Scale::fit(&[2.0, 9.0], Some(1.0)),
            Scale::Linear {
                hi: 10.0,
                step: 2.0
            }
        );
        assert_eq!(
            Scale::fit(&[0.5, 40.0], Some(1.0)),
            Scale::Log { lo: -1, hi: 2 }
        );
        // The reference is in the domain: 30 and 40 alone are linear, with 1× they span 40×.
        assert!(Scale::fit(&[30.0, 40.0], Some(1.0)).is_log());
        assert!(!Scale::fit(&[30.0, 40.0], None).is_log());
        assert_eq!(Scale::fit(&[100.0], Some(1.0)), Scale::Log { lo: 0, hi: 2 });
        assert_eq!(Scale::fit(&[], None), Scale::Linear { hi: 1.0, step: 0.2 });
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(11.0), 20.0);
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(0.0123), "0.012");
        assert_eq!(sig3(1234.5), "1234");
        assert_eq!(tick_label(0.1), "0.1");
        assert_eq!(tick_label(100.0), "100");
    }

    #[test]
    fn renders_parseable_svg_with_one_bar_per_row() {
        for (values, log) in [(&[2.0, 12.3, 0.0][..], false), (&[0.5, 150.0][..], true)] {
            let svg = chart(values, Some(1.0)).render();
            let doc = roxmltree::Document::parse(&svg).unwrap();
            let bars: Vec<_> = doc
                .descendants()
                .filter(|n| n.attribute("class") == Some("bar"))
                .collect();
            let positive = values.iter().filter(|v| **v > 0.0).count();
            assert_eq!(bars.len(), positive, "{svg}");
            assert!(svg.contains("t &lt;&amp;&gt; &quot;q&quot;"));
            assert!(svg.contains("12.3×") || !values.contains(&12.3));
            assert!(svg.contains("class=\"reference\""));
            assert!(svg.contains(">1×</text>"), "{svg}");
            assert_eq!(svg.contains("(log scale)"), log, "{svg}");
            // Bars grow with their values.
            if log {
                let w: Vec<f64> = bars
                    .iter()
                    .map(|b| b.attribute("width").unwrap().parse().unwrap())
                    .collect();
                assert!(w[0] < w[1], "{w:?}");
            }
        }
        let empty = chart(&[], None).render();
        roxmltree::Document::parse(&empty).unwrap();
        assert!(empty.contains("no data"));
    }
}
