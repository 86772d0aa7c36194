//! A small SVG chart helper for the HTML report (no plotting crate, no JavaScript): XY charts
//! with linear or log axes, scatter markers and lines, legends and titles, score heatmaps, and
//! radar charts (the paper comparison's Figure 1).
//! Coordinates are printed with fixed decimals so identical data gives identical SVG.

use crate::format::{compact, fixed, html_escape};

/// Marker shapes, cycled for the variants of one method family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

impl Marker {
    pub const ALL: [Marker; 5] = [Marker::Circle, Marker::Square, Marker::Triangle, Marker::Diamond, Marker::Cross];
}

/// One data point; `tip` becomes a hover tooltip, `label` a small text beside the marker.
#[derive(Clone, Debug)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub tip: String,
    pub label: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub marker: Marker,
    pub points: Vec<Point>,
    /// Join the points (sorted by x) with a line.
    pub line: bool,
    pub dashed: bool,
    /// Marker opacity (dense scatters use less than 1).
    pub opacity: f64,
    /// Marker radius in pixels.
    pub size: f64,
}

impl Series {
    pub fn new(name: impl Into<String>, color: impl Into<String>, marker: Marker) -> Series {
        Series { name: name.into(), color: color.into(), marker, points: Vec::new(), line: false, dashed: false, opacity: 1.0, size: 4.5 }
    }
}

/// How tick labels are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickFormat {
    /// `512`, `2.7k`, `1.5M`.
    Compact,
    /// `4×`.
    Ratio,
}

#[derive(Clone, Debug)]
pub struct Axis {
    pub label: String,
    pub log: bool,
    /// Start a linear axis at zero.
    pub zero: bool,
    pub format: TickFormat,
    /// Hard bounds the padding around the data may not cross (e.g. 0–100 for scores).
    pub limit: Option<(f64, f64)>,
}

impl Axis {
    pub fn linear(label: impl Into<String>) -> Axis {
        Axis { label: label.into(), log: false, zero: false, format: TickFormat::Compact, limit: None }
    }
}

/// A horizontal reference line across the plot (e.g. the full cache's score).
#[derive(Clone, Debug)]
pub struct RefLine {
    pub y: f64,
    pub label: String,
    pub color: String,
}

#[derive(Clone, Debug)]
pub struct XyChart {
    pub title: String,
    pub subtitle: Option<String>,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
    pub reference: Vec<RefLine>,
    pub width: f64,
    pub height: f64,
    /// Legend in rows under the plot instead of a column at its right (for narrow charts).
    pub legend_below: bool,
}

/// A numeric range mapped onto pixels.
#[derive(Clone, Debug)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    p0: f64,
    p1: f64,
    ticks: Vec<f64>,
}

impl Scale {
    fn map(&self, v: f64) -> f64 {
        let (a, b, v) = if self.log { (self.lo.log2(), self.hi.log2(), v.log2()) } else { (self.lo, self.hi, v) };
        if b == a {
            return (self.p0 + self.p1) / 2.0;
        }
        self.p0 + (v - a) / (b - a) * (self.p1 - self.p0)
    }
}

/// A "nice" step (1, 2, 2.5 or 5 × 10^k) giving about `target` intervals over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 2.5 {
        2.5
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn linear_scale(values: &[f64], zero: bool, limit: Option<(f64, f64)>, p0: f64, p1: f64) -> Scale {
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        lo = 0.0;
        hi = 1.0;
    }
    if zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    // keep markers off the axes: a little room on each side (not below a zero anchor)
    let pad = (hi - lo) * 0.05;
    if !(zero && lo == 0.0) {
        lo -= pad;
    }
    hi += pad;
    if let Some((a, b)) = limit {
        lo = lo.max(a.min(lo + pad));
        hi = hi.min(b.max(hi - pad));
    }
    if hi - lo < 1e-12 {
        let pad = if hi.abs() > 1e-12 { hi.abs() * 0.1 } else { 1.0 };
        lo -= pad;
        hi += pad;
        if zero && lo < 0.0 && values.iter().all(|v| *v >= 0.0) {
            lo = 0.0;
        }
    }
    let step = nice_step(hi - lo, 5.0);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let n = ((hi - lo) / step).round() as i64;
    let ticks = (0..=n).map(|i| lo + i as f64 * step).collect();
    Scale { lo, hi, log: false, p0, p1, ticks }
}

fn log_scale(values: &[f64], p0: f64, p1: f64) -> Scale {
    let pos: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0 && v.is_finite()).collect();
    let lo = pos.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (1.0, 2.0) };
    let (k0, k1) = (lo.log2().floor() as i32, hi.log2().ceil().max(lo.log2().floor() + 1.0) as i32);
    let lo_d = 2f64.powi(k0) / 1.2;
    let hi_d = 2f64.powi(k1) * 1.3;
    let ticks = if k1 - k0 <= 10 {
        (k0..=k1).map(|k| 2f64.powi(k)).collect()
    } else {
        let d0 = lo_d.log10().floor() as i32;
        let d1 = hi_d.log10().ceil() as i32;
        (d0..=d1).map(|d| 10f64.powi(d)).filter(|v| *v >= lo_d && *v <= hi_d).collect()
    };
    Scale { lo: lo_d, hi: hi_d, log: true, p0, p1, ticks }
}

fn tick_text(v: f64, format: TickFormat) -> String {
    match format {
        TickFormat::Compact => compact(v),
        TickFormat::Ratio => format!("{}×", compact(v)),
    }
}

fn f1(v: f64) -> String {
    fixed(v, 1)
}

/// The opening every chart shares: the `<svg>` element of class `class`, the chart's own
/// stylesheet (`style`, may be empty), its `<title>`, a white background, and the title and
/// subtitle texts at `x` (as written in the attribute).
fn chart_open(class: &str, width: f64, height: f64, style: &str, title: &str, subtitle: Option<&str>, x: &str) -> String {
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"{class}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\">",
        w = f1(width),
        h = f1(height),
        t = html_escape(title)
    );
    o.push_str(style);
    o.push_str(&format!("<title>{}</title>", html_escape(title)));
    o.push_str(&format!("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#fff\"/>", f1(width), f1(height)));
    o.push_str(&format!("<text class=\"c-title\" x=\"{x}\" y=\"22\">{}</text>", html_escape(title)));
    if let Some(sub) = subtitle {
        o.push_str(&format!("<text class=\"c-sub\" x=\"{x}\" y=\"40\">{}</text>", html_escape(sub)));
    }
    o
}

/// The SVG of one marker centred on (x, y).
pub fn marker_svg(m: Marker, x: f64, y: f64, r: f64, color: &str, opacity: f64) -> String {
    let op = if opacity < 1.0 { format!(" fill-opacity=\"{}\"", fixed(opacity, 2)) } else { String::new() };
    match m {
        Marker::Circle => format!("<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{color}\"{op} stroke=\"#fff\" stroke-width=\"0.8\"/>", f1(x), f1(y), f1(r)),
        Marker::Square => {
            let s = r * 0.9;
            format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{color}\"{op} stroke=\"#fff\" stroke-width=\"0.8\"/>",
                f1(x - s),
                f1(y - s),
                f1(2.0 * s),
                f1(2.0 * s)
            )
        }
        Marker::Triangle => {
            let s = r * 1.15;
            format!(
                "<path d=\"M{},{}L{},{}L{},{}Z\" fill=\"{color}\"{op} stroke=\"#fff\" stroke-width=\"0.8\"/>",
                f1(x),
                f1(y - s),
                f1(x + s),
                f1(y + s * 0.8),
                f1(x - s),
                f1(y + s * 0.8)
            )
        }
        Marker::Diamond => {
            let s = r * 1.2;
            format!(
                "<path d=\"M{},{}L{},{}L{},{}L{},{}Z\" fill=\"{color}\"{op} stroke=\"#fff\" stroke-width=\"0.8\"/>",
                f1(x),
                f1(y - s),
                f1(x + s),
                f1(y),
                f1(x),
                f1(y + s),
                f1(x - s),
                f1(y)
            )
        }
        Marker::Cross => {
            let s = r * 0.9;
            let so = if opacity < 1.0 { format!(" stroke-opacity=\"{}\"", fixed(opacity, 2)) } else { String::new() };
            format!(
                "<path d=\"M{},{}L{},{}M{},{}L{},{}\" stroke=\"{color}\"{so} stroke-width=\"2.2\" fill=\"none\"/>",
                f1(x - s),
                f1(y - s),
                f1(x + s),
                f1(y + s),
                f1(x - s),
                f1(y + s),
                f1(x + s),
                f1(y - s)
            )
        }
    }
}

fn truncate_chars(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const LEGEND_W: f64 = 170.0;

impl XyChart {
    pub fn new(title: impl Into<String>, x: Axis, y: Axis) -> XyChart {
        XyChart { title: title.into(), subtitle: None, x, y, series: Vec::new(), reference: Vec::new(), width: 640.0, height: 380.0, legend_below: false }
    }

    /// Top-left corners of the legend entries (series, then reference lines) and the height
    /// the legend adds below the plot.
    fn legend_layout(&self, top: f64, left: f64) -> (Vec<(f64, f64)>, f64) {
        let names: Vec<String> =
            self.series.iter().map(|s| truncate_chars(&s.name, 22)).chain(self.reference.iter().map(|r| truncate_chars(&r.label, 22))).collect();
        if !self.legend_below {
            let lx = self.width - LEGEND_W;
            return (names.iter().enumerate().map(|(i, _)| (lx, top + 4.0 + 18.0 * i as f64)).collect(), 0.0);
        }
        let (x0, x1) = (left - 40.0, self.width - 12.0);
        let (mut x, mut row) = (x0, 0usize);
        let mut out = Vec::new();
        for n in &names {
            let w = 36.0 + 6.6 * n.chars().count() as f64;
            if x + w > x1 && x > x0 {
                x = x0;
                row += 1;
            }
            out.push((x, 18.0 * row as f64));
            x += w;
        }
        let rows = if names.is_empty() { 0 } else { row + 1 };
        (out, 18.0 * rows as f64 + 6.0)
    }

    /// The chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let legend_rows = self.series.len() + self.reference.len();
        let top = if self.subtitle.is_some() { 62.0 } else { 46.0 };
        let left = 66.0;
        let (mut legend_pos, legend_h) = self.legend_layout(top, left);
        let (height, right) =
            if self.legend_below { (self.height + legend_h, 22.0) } else { (self.height.max(top + 18.0 * legend_rows as f64 + 24.0), LEGEND_W + 20.0) };
        let bottom = 54.0 + legend_h;
        let (px0, px1) = (left, self.width - right);
        let (py0, py1) = (height - bottom, top);
        if self.legend_below {
            for p in &mut legend_pos {
                p.1 += py0 + 62.0;
            }
        }
        let xs: Vec<f64> = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.x)).collect();
        let mut ys: Vec<f64> = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.y)).collect();
        ys.extend(self.reference.iter().map(|r| r.y));
        let sx = if self.x.log { log_scale(&xs, px0, px1) } else { linear_scale(&xs, self.x.zero, self.x.limit, px0, px1) };
        let sy = if self.y.log { log_scale(&ys, py0, py1) } else { linear_scale(&ys, self.y.zero, self.y.limit, py0, py1) };

        let mut o = chart_open("chart", self.width, height, "", &self.title, self.subtitle.as_deref(), &f1(left - 50.0));
        // grid and ticks
        for &t in &sx.ticks {
            let x = sx.map(t);
            o.push_str(&format!("<line class=\"c-grid\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>", f1(py0), f1(py1), x = f1(x)));
            o.push_str(&format!(
                "<text class=\"c-tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                f1(x),
                f1(py0 + 17.0),
                html_escape(&tick_text(t, self.x.format))
            ));
        }
        for &t in &sy.ticks {
            let y = sy.map(t);
            o.push_str(&format!("<line class=\"c-grid\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>", f1(px0), f1(px1), y = f1(y)));
            o.push_str(&format!(
                "<text class=\"c-tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                f1(px0 - 7.0),
                f1(y + 4.0),
                html_escape(&tick_text(t, self.y.format))
            ));
        }
        o.push_str(&format!("<path class=\"c-axis\" d=\"M{},{}L{},{}L{},{}\"/>", f1(px0), f1(py1), f1(px0), f1(py0), f1(px1), f1(py0)));
        o.push_str(&format!(
            "<text class=\"c-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            f1((px0 + px1) / 2.0),
            f1(py0 + 42.0),
            html_escape(&self.x.label)
        ));
        o.push_str(&format!(
            "<text class=\"c-label\" transform=\"translate({},{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            f1(16.0),
            f1((py0 + py1) / 2.0),
            html_escape(&self.y.label)
        ));
        // reference lines
        for r in &self.reference {
            let y = sy.map(r.y);
            o.push_str(&format!(
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"1.2\" stroke-dasharray=\"5 4\"><title>{}</title></line>",
                f1(px0),
                f1(px1),
                r.color,
                html_escape(&r.label),
                y = f1(y)
            ));
        }
        // series
        let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
        for s in &self.series {
            let mut pts: Vec<&Point> = s.points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()).collect();
            if self.x.log {
                pts.retain(|p| p.x > 0.0);
            }
            if s.line && pts.len() > 1 {
                let mut sorted = pts.clone();
                sorted.sort_by(|a, b| a.x.total_cmp(&b.x));
                let d: Vec<String> =
                    sorted.iter().enumerate().map(|(i, p)| format!("{}{},{}", if i == 0 { "M" } else { "L" }, f1(sx.map(p.x)), f1(sy.map(p.y)))).collect();
                o.push_str(&format!(
                    "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} stroke-linejoin=\"round\"/>",
                    d.join(""),
                    s.color,
                    if s.dashed { " stroke-dasharray=\"6 4\"" } else { "" }
                ));
            }
            for p in &pts {
                let (x, y) = (sx.map(p.x), sy.map(p.y));
                o.push_str("<g>");
                if !p.tip.is_empty() {
                    o.push_str(&format!("<title>{}</title>", html_escape(&p.tip)));
                }
                o.push_str(&marker_svg(s.marker, x, y, s.size, &s.color, s.opacity));
                if let Some(l) = &p.label {
                    // first free spot among above-right, below-right, above-left, below-left
                    let w = 6.0 * l.chars().count() as f64;
                    let spots = [(x + 7.0, y - 6.0), (x + 7.0, y + 14.0), (x - 7.0 - w, y - 6.0), (x - 7.0 - w, y + 14.0)];
                    let free = spots.iter().find(|(lx, ly)| {
                        let b = (*lx, *ly - 10.0, *lx + w, *ly + 2.0);
                        *lx >= px0 && b.2 <= self.width && !placed.iter().any(|q: &(f64, f64, f64, f64)| b.0 < q.2 && q.0 < b.2 && b.1 < q.3 && q.1 < b.3)
                    });
                    if let Some(&(lx, ly)) = free {
                        placed.push((lx, ly - 10.0, lx + w, ly + 2.0));
                        o.push_str(&format!("<text class=\"c-plabel\" x=\"{}\" y=\"{}\">{}</text>", f1(lx), f1(ly), html_escape(l)));
                    }
                }
                o.push_str("</g>");
            }
        }
        // legend
        let mut pos = legend_pos.into_iter();
        for s in &self.series {
            let Some((lx, ly)) = pos.next() else { break };
            o.push_str("<g>");
            o.push_str(&format!("<title>{}</title>", html_escape(&s.name)));
            if s.line {
                o.push_str(&format!(
                    "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{}/>",
                    f1(lx),
                    f1(lx + 22.0),
                    s.color,
                    if s.dashed { " stroke-dasharray=\"6 4\"" } else { "" },
                    y = f1(ly)
                ));
            }
            o.push_str(&marker_svg(s.marker, lx + 11.0, ly, 4.5, &s.color, 1.0));
            o.push_str(&format!(
                "<text class=\"c-legend\" x=\"{}\" y=\"{}\">{}</text>",
                f1(lx + 30.0),
                f1(ly + 4.0),
                html_escape(&truncate_chars(&s.name, 22))
            ));
            o.push_str("</g>");
        }
        for r in &self.reference {
            let Some((lx, ly)) = pos.next() else { break };
            o.push_str(&format!(
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"1.2\" stroke-dasharray=\"5 4\"/>",
                f1(lx),
                f1(lx + 22.0),
                r.color,
                y = f1(ly)
            ));
            o.push_str(&format!(
                "<text class=\"c-legend\" x=\"{}\" y=\"{}\">{}</text>",
                f1(lx + 30.0),
                f1(ly + 4.0),
                html_escape(&truncate_chars(&r.label, 22))
            ));
        }
        if self.series.iter().all(|s| s.points.is_empty()) {
            o.push_str(&format!("<text class=\"c-sub\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>", f1((px0 + px1) / 2.0), f1((py0 + py1) / 2.0)));
        }
        o.push_str("</svg>");
        o
    }
}

/// Red (0) → yellow (50) → green (100) for a 0–100 score.
pub fn score_color(score: f64) -> String {
    const STOPS: [(f64, [f64; 3]); 5] =
        [(0.0, [215.0, 48.0, 39.0]), (25.0, [252.0, 141.0, 89.0]), (50.0, [254.0, 224.0, 139.0]), (75.0, [145.0, 207.0, 96.0]), (100.0, [26.0, 152.0, 80.0])];
    let s = score.clamp(0.0, 100.0);
    let mut i = 0;
    while i + 2 < STOPS.len() && s > STOPS[i + 1].0 {
        i += 1;
    }
    let (a, ca) = STOPS[i];
    let (b, cb) = STOPS[i + 1];
    let t = if b > a { (s - a) / (b - a) } else { 0.0 };
    let c: Vec<u8> = (0..3).map(|k| (ca[k] + (cb[k] - ca[k]) * t).round() as u8).collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// True when white text reads better than dark text on `#rrggbb`.
pub fn is_dark(hex: &str) -> bool {
    let c = |i: usize| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("ff"), 16).unwrap_or(255) as f64 / 255.0;
    let lum = 0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5);
    lum < 0.5
}

/// A grid of 0–100 scores: `values[row][col]`, rows top to bottom, columns left to right.
#[derive(Clone, Debug)]
pub struct Heatmap {
    pub title: String,
    pub subtitle: Option<String>,
    pub x_label: String,
    pub y_label: String,
    pub x_ticks: Vec<String>,
    pub y_ticks: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    /// Tooltips, same shape as `values` (may be empty).
    pub tips: Vec<Vec<String>>,
}

impl Heatmap {
    pub fn render(&self) -> String {
        let nx = self.x_ticks.len().max(1) as f64;
        let ny = self.y_ticks.len().max(1) as f64;
        let cw = (260.0 / nx).clamp(14.0, 46.0).floor();
        let ch = (190.0 / ny).clamp(12.0, 30.0).floor();
        let rotate = cw < 40.0 && self.x_ticks.iter().any(|t| t.chars().count() as f64 * 6.2 > cw - 2.0);
        let top = if self.subtitle.is_some() { 60.0 } else { 44.0 };
        let left = 70.0;
        let x_tick_h = if rotate { 44.0 } else { 22.0 };
        let plot_w = cw * nx;
        let plot_h = ch * ny;
        let width = left + plot_w + 64.0;
        let height = top + plot_h + x_tick_h + 30.0;
        let mut o = chart_open("chart heat", width, height, "", &self.title, self.subtitle.as_deref(), "12");
        let show_text = cw >= 24.0 && ch >= 15.0;
        for (r, row) in self.values.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let x = left + c as f64 * cw;
                let y = top + r as f64 * ch;
                let fill = v.map(score_color).unwrap_or_else(|| "#eeeeee".into());
                o.push_str("<g>");
                if let Some(tip) = self.tips.get(r).and_then(|t| t.get(c)) {
                    o.push_str(&format!("<title>{}</title>", html_escape(tip)));
                }
                o.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"1\"/>",
                    f1(x),
                    f1(y),
                    f1(cw),
                    f1(ch),
                    fill
                ));
                if let (true, Some(v)) = (show_text, v) {
                    o.push_str(&format!(
                        "<text class=\"c-cell\" x=\"{}\" y=\"{}\" text-anchor=\"middle\"{}>{}</text>",
                        f1(x + cw / 2.0),
                        f1(y + ch / 2.0 + 4.0),
                        if is_dark(&score_color(*v)) { " style=\"fill:#fff\"" } else { "" },
                        fixed(*v, 0)
                    ));
                }
                o.push_str("</g>");
            }
        }
        for (r, t) in self.y_ticks.iter().enumerate() {
            o.push_str(&format!(
                "<text class=\"c-tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                f1(left - 6.0),
                f1(top + r as f64 * ch + ch / 2.0 + 4.0),
                html_escape(t)
            ));
        }
        for (c, t) in self.x_ticks.iter().enumerate() {
            let x = left + c as f64 * cw + cw / 2.0;
            let y = top + plot_h + 14.0;
            if rotate {
                o.push_str(&format!(
                    "<text class=\"c-tick\" transform=\"translate({},{}) rotate(-45)\" text-anchor=\"end\">{}</text>",
                    f1(x + 3.0),
                    f1(y - 4.0),
                    html_escape(t)
                ));
            } else {
                o.push_str(&format!("<text class=\"c-tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", f1(x), f1(y), html_escape(t)));
            }
        }
        o.push_str(&format!(
            "<text class=\"c-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            f1(left + plot_w / 2.0),
            f1(height - 10.0),
            html_escape(&self.x_label)
        ));
        o.push_str(&format!(
            "<text class=\"c-label\" transform=\"translate({},{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            f1(18.0),
            f1(top + plot_h / 2.0),
            html_escape(&self.y_label)
        ));
        // colour bar: 0 at the bottom, 100 at the top
        let bx = left + plot_w + 16.0;
        let steps = 20;
        let bh = plot_h.max(40.0) / steps as f64;
        for i in 0..steps {
            let v = 100.0 * (steps - 1 - i) as f64 / (steps - 1) as f64;
            o.push_str(&format!(
                "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"{}\" fill=\"{}\"/>",
                f1(bx),
                f1(top + i as f64 * bh),
                f1(bh + 0.5),
                score_color(v)
            ));
        }
        for (v, frac) in [(100, 0.0), (50, 0.5), (0, 1.0)] {
            o.push_str(&format!("<text class=\"c-tick\" x=\"{}\" y=\"{}\">{}</text>", f1(bx + 17.0), f1(top + frac * bh * steps as f64 + 4.0), v));
        }
        o.push_str(&format!("<text class=\"c-tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">score</text>", f1(bx + 8.0), f1(top - 6.0)));
        o.push_str("</svg>");
        o
    }
}

/// Where a [`RadarChart`] puts its centre (x, y), in pixels from the top left of the SVG.
pub const RADAR_CENTER: (f64, f64) = (300.0, 320.0);
/// The radius, in pixels, of a [`RadarChart`]'s outermost ring (the top of its scale).
pub const RADAR_RADIUS: f64 = 190.0;

/// One closed polygon of a radar chart.
#[derive(Clone, Debug)]
pub struct RadarSeries {
    pub name: String,
    pub color: String,
    pub dashed: bool,
    /// The polygon's `class` attribute (e.g. to tell measured polygons from reference ones).
    pub class: String,
    /// One value per axis of the chart; None (or a value that is not finite): no vertex on that axis.
    pub values: Vec<Option<f64>>,
}

/// A radar (spider) chart: axes spread clockwise from the top, one polygon per series over the
/// axes it has a value for, concentric grid rings labelled with their values, a legend at the
/// right. The scale runs from 0 at the centre to a round maximum over the values. Carries its
/// own stylesheet, so it reads the same as a standalone `.svg` file as inside the HTML report.
/// Vertices are printed with two decimals.
#[derive(Clone, Debug)]
pub struct RadarChart {
    pub title: String,
    pub subtitle: Option<String>,
    pub axes: Vec<String>,
    pub series: Vec<RadarSeries>,
}

/// The top of a radar scale over `values` and its ring step: a "nice" step (1, 2, 2.5 or 5 × 10^k)
/// giving about five rings, and the smallest multiple of it at or above the largest value.
pub fn radar_scale(values: &[f64]) -> (f64, f64) {
    let hi = values.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    let hi = if hi > 0.0 { hi } else { 100.0 };
    let step = nice_step(hi, 5.0);
    ((hi / step - 1e-9).ceil().max(1.0) * step, step)
}

const RADAR_STYLE: &str = "<style>.c-title{font:650 15px sans-serif;fill:#1d2330}.c-sub{font:12px sans-serif;fill:#6b7280}\
.c-tick{font:11px sans-serif;fill:#4a5162}.c-label{font:12.5px sans-serif;fill:#2d3446}.c-legend{font:12px sans-serif;fill:#2d3446}\
.c-grid{stroke:#dfe2e8;stroke-width:1;fill:none}.c-axis{stroke:#8a91a0;stroke-width:1;fill:none}</style>";

fn f2(v: f64) -> String {
    fixed(v, 2)
}

impl RadarChart {
    /// The point of `value` on axis `i` of the chart's `n` axes, on a 0–`max` scale.
    fn point(i: usize, n: usize, value: f64, max: f64) -> (f64, f64) {
        let angle = -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / n.max(1) as f64;
        let r = RADAR_RADIUS * (value / max).max(0.0);
        (RADAR_CENTER.0 + r * angle.cos(), RADAR_CENTER.1 + r * angle.sin())
    }

    /// The chart as an `<svg>` element; series with fewer than three values are left out.
    pub fn render(&self) -> String {
        let n = self.axes.len();
        let (cx, cy) = RADAR_CENTER;
        let vertices = |s: &RadarSeries| -> Vec<(usize, f64)> {
            s.values.iter().take(n).enumerate().filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (i, v))).collect()
        };
        let drawn: Vec<(&RadarSeries, Vec<(usize, f64)>)> = self.series.iter().map(|s| (s, vertices(s))).filter(|(_, v)| v.len() >= 3).collect();
        let all: Vec<f64> = drawn.iter().flat_map(|(_, v)| v.iter().map(|(_, x)| *x)).collect();
        let (max, step) = radar_scale(&all);
        let width = cx + RADAR_RADIUS + 120.0 + LEGEND_W + 60.0;
        let top = 60.0;
        let height = (cy + RADAR_RADIUS + 50.0).max(top + 18.0 * drawn.len() as f64 + 24.0);

        let mut o = chart_open("chart radar", width, height, RADAR_STYLE, &self.title, self.subtitle.as_deref(), "16");
        // grid rings, labelled along the first (upward) axis
        let rings = (max / step).round() as usize;
        for k in 1..=rings {
            let v = step * k as f64;
            let r = RADAR_RADIUS * v / max;
            o.push_str(&format!("<circle class=\"c-grid\" cx=\"{}\" cy=\"{}\" r=\"{}\"/>", f2(cx), f2(cy), f2(r)));
            o.push_str(&format!("<text class=\"c-tick\" x=\"{}\" y=\"{}\">{}</text>", f1(cx + 4.0), f1(cy - r - 3.0), html_escape(&compact(v))));
        }
        // spokes and axis names
        for (i, name) in self.axes.iter().enumerate() {
            let (x, y) = Self::point(i, n, max, max);
            o.push_str(&format!("<line class=\"c-axis\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>", f2(cx), f2(cy), f2(x), f2(y)));
            let (lx, ly) = Self::point(i, n, max * (RADAR_RADIUS + 16.0) / RADAR_RADIUS, max);
            let anchor = if lx > cx + 1.0 {
                "start"
            } else if lx < cx - 1.0 {
                "end"
            } else {
                "middle"
            };
            let dy = if ly > cy + 1.0 {
                12.0
            } else if ly < cy - 1.0 {
                -2.0
            } else {
                4.0
            };
            o.push_str(&format!("<text class=\"c-label\" x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>", f1(lx), f1(ly + dy), html_escape(name)));
        }
        // polygons, then their vertices
        for (s, vs) in &drawn {
            let points: Vec<String> = vs.iter().map(|(i, v)| Self::point(*i, n, *v, max)).map(|(x, y)| format!("{},{}", f2(x), f2(y))).collect();
            o.push_str(&format!(
                "<polygon class=\"{}\" points=\"{}\" {} stroke=\"{c}\" stroke-width=\"2\"{} stroke-linejoin=\"round\"><title>{}</title></polygon>",
                html_escape(&s.class),
                points.join(" "),
                // a light fill under measured polygons only, so reference outlines stay readable
                if s.dashed { "fill=\"none\"".to_string() } else { format!("fill=\"{}\" fill-opacity=\"0.05\"", html_escape(&s.color)) },
                if s.dashed { " stroke-dasharray=\"6 4\"" } else { "" },
                html_escape(&s.name),
                c = html_escape(&s.color),
            ));
            for (i, v) in vs {
                let (x, y) = Self::point(*i, n, *v, max);
                let tip = format!("{} — {}: {}", s.name, self.axes[*i], fixed(*v, 2));
                let dot = if s.dashed {
                    format!("<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"#fff\" stroke=\"{}\" stroke-width=\"1.5\"/>", f2(x), f2(y), html_escape(&s.color))
                } else {
                    marker_svg(Marker::Circle, x, y, 3.2, &html_escape(&s.color), 1.0)
                };
                o.push_str(&format!("<g><title>{}</title>{dot}</g>", html_escape(&tip)));
            }
        }
        // legend
        let lx = cx + RADAR_RADIUS + 120.0;
        for (k, (s, _)) in drawn.iter().enumerate() {
            let ly = top + 4.0 + 18.0 * k as f64;
            o.push_str(&format!(
                "<g><title>{}</title><line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{}/><text class=\"c-legend\" x=\"{}\" y=\"{}\">{}</text></g>",
                html_escape(&s.name),
                f1(lx),
                f1(lx + 22.0),
                html_escape(&s.color),
                if s.dashed { " stroke-dasharray=\"6 4\"" } else { "" },
                f1(lx + 30.0),
                f1(ly + 4.0),
                html_escape(&truncate_chars(&s.name, 30)),
                y = f1(ly)
            ));
        }
        if drawn.is_empty() {
            o.push_str(&format!("<text class=\"c-sub\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>", f1(cx), f1(cy)));
        }
        o.push_str("</svg>");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_linear_ticks() {
        let s = linear_scale(&[3.0, 97.0], false, Some((0.0, 100.0)), 0.0, 100.0);
        assert_eq!(s.lo, 0.0);
        assert_eq!(s.hi, 100.0);
        assert_eq!(s.ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
    }

    #[test]
    fn log_ticks_are_powers_of_two() {
        let s = log_scale(&[1.0, 3.8, 5.3], 0.0, 100.0);
        assert_eq!(s.ticks, vec![1.0, 2.0, 4.0, 8.0]);
        assert!(s.map(1.0) > 0.0 && s.map(8.0) < 100.0);
    }

    #[test]
    fn colours_run_red_to_green() {
        assert_eq!(score_color(0.0), "#d73027");
        assert_eq!(score_color(100.0), "#1a9850");
        assert_eq!(score_color(50.0), "#fee08b");
    }

    #[test]
    fn chart_escapes_text() {
        let mut c = XyChart::new("a <b>", Axis::linear("x"), Axis::linear("y"));
        let mut s = Series::new("<s>", "#000", Marker::Circle);
        s.points.push(Point { x: 1.0, y: 2.0, tip: "<t>".into(), label: None });
        c.series.push(s);
        let svg = c.render();
        assert!(svg.contains("a &lt;b&gt;"));
        assert!(!svg.contains("<s>") && !svg.contains("<t>"));
    }
}
