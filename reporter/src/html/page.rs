//! The page every chart sits on: its style sheet, inline, and the escaping of field
//! text (guest file names, trace paths) for HTML and SVG.

/// Escape text for HTML and SVG (field data: guest file names, trace paths).
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

pub(super) const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;margin:0;background:#fff}
main{max-width:1100px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 4px}
p.sub,figcaption,.note{color:#555;font-size:13px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left}
table.kv td:first-child{text-align:left;font-weight:600;background:#fafafa}table.kv td{text-align:left;white-space:normal}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:6px 10px;margin:8px 0;border-radius:4px}
.fail{background:#fdecea;border:1px solid #e57373;padding:6px 10px;margin:8px 0;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:6px 14px}
figure{margin:8px 0}
.legend{font-size:12px;margin:4px 0 2px}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
svg text{font-family:inherit}svg .tick{font-size:10px;fill:#555}svg .lbl{font-size:11px;fill:#333}svg .ttl{font-size:12px;font-weight:600;fill:#222}svg .clamped{font-size:10px;font-weight:600;fill:#222;paint-order:stroke;stroke:#fff;stroke-width:3px}
.slower{color:#c62828;font-weight:600}.faster{color:#2e7d32;font-weight:600}.same{color:#777}
"#;

pub(super) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>\n",
        esc(title)
    )
}
