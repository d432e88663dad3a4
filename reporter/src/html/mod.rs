//! Self-contained HTML pages with inline SVG charts: the report (`viopath report
//! --html`) and the comparison (`viopath compare --html`).
//!
//! A page loads nothing: no script, no style sheet, no font, no image from elsewhere,
//! so it opens offline and can be attached to a ticket. Charts are plain SVG drawn
//! here; hovering a bar or a point shows its numbers (SVG `<title>`). Each chart's
//! `<svg class="chart">` lists the colours it drew data in (`data-colors`), so a test
//! can look for them in a screenshot.

mod compare;
mod page;
mod report;
mod svg;

pub use compare::{ComparePage, compare_page};
pub use report::report_page;

#[cfg(test)]
mod tests {
    use super::compare::ratio_label;
    use super::page::esc;
    use super::report::segments;
    use crate::layers::Boundary;
    use crate::layers::{Boundaries, split};
    use crate::units::{fmt_axis, fmt_decade};

    #[test]
    fn segments_tile_the_io_like_split() {
        let mut b = Boundaries::new();
        b[Boundary::Parsed] = 1000;
        b[Boundary::Submitted] = 1100;
        b[Boundary::Dispatched] = 1050; // out of order: clamped
        b[Boundary::HostDone] = 1500;
        b[Boundary::Completed] = 1600;
        let segs = segments(&b);
        let (layers, e2e) = split(&b);
        assert_eq!(segs.iter().map(|s| s.2).sum::<u64>(), e2e);
        for (i, start, dur) in &segs {
            assert_eq!(layers[*i], Some(*dur));
            assert!(start + dur <= e2e);
        }
        // Contiguous.
        for w in segs.windows(2) {
            assert_eq!(w[0].1 + w[0].2, w[1].1);
        }
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(fmt_axis(0.0), "0");
        assert_eq!(fmt_axis(50_000.0), "50 µs");
        assert_eq!(fmt_axis(1_500_000.0), "1.5 ms");
        assert_eq!(fmt_axis(200.0), "200 ns");
        assert_eq!(fmt_decade(1e9), "1 s");
        assert_eq!(ratio_label(0.5), "-50%");
        assert_eq!(ratio_label(3.25), "×3.2");
    }

    #[test]
    fn field_text_is_escaped() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
