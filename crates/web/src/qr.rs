//! QR codes as inline SVG, for TOTP enrolment on the web pages.
//!
//! The modules are drawn here as one `<path>` rather than by qrcode's SVG renderer so that
//! the output is exactly what the pages' CSP allows (presentation attributes, no `style`) and
//! carries nothing of the encoded text, which is an `otpauth://` URI holding the secret.

use std::fmt::Write as _;

use qrcode::{Color, QrCode};

pub use qrcode::types::QrError;

/// Light modules around the code, as the QR specification asks (ISO/IEC 18004, 4 modules).
const QUIET_ZONE: usize = 4;
/// The drawn size in CSS pixels; the viewBox scales the modules into it.
const SIZE: u32 = 240;

/// `text` as an SVG QR code (error correction level M): black modules on white, with a quiet
/// zone, [`SIZE`] pixels square.
pub fn qr_svg(text: &str) -> Result<String, QrError> {
    let code = QrCode::new(text.as_bytes())?;
    Ok(render(code.width(), &code.to_colors()))
}

/// The SVG of a `width`×`width` module matrix (row by row).
fn render(width: usize, modules: &[Color]) -> String {
    let side = width + 2 * QUIET_ZONE;
    let mut path = String::new();
    for (y, row) in modules.chunks(width.max(1)).enumerate() {
        let mut x = 0;
        while x < row.len() {
            if row[x] != Color::Dark {
                x += 1;
                continue;
            }
            // One rectangle per run of dark modules in a row keeps the path short.
            let run = row[x..].iter().take_while(|c| **c == Color::Dark).count();
            let _ = write!(path, "M{} {}h{run}v1h-{run}z", x + QUIET_ZONE, y + QUIET_ZONE);
            x += run;
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SIZE}\" height=\"{SIZE}\" viewBox=\"0 0 {side} {side}\" \
         role=\"img\" aria-label=\"QR code for your authenticator app\" shape-rendering=\"crispEdges\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "otpauth://totp/sealmail:alice%40example.test?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=sealmail&algorithm=SHA1&digits=6&period=30";

    /// The module matrix drawn by the path, read back from its `M x y hN v1 h-N z` runs.
    fn modules_of(svg: &str, width: usize) -> Result<Vec<Color>, String> {
        let d = svg
            .split(" d=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or("no path data")?;
        let mut modules = vec![Color::Light; width * width];
        for run in d.split('M').filter(|r| !r.is_empty()) {
            let (x, rest) = run.split_once(' ').ok_or(format!("run {run}"))?;
            let (y, rest) = rest.split_once('h').ok_or(format!("run {run}"))?;
            let (n, rest) = rest.split_once('v').ok_or(format!("run {run}"))?;
            if rest != format!("1h-{n}z") {
                return Err(format!("run {run}"));
            }
            let parse = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
            let (x, y, n) = (parse(x)? - QUIET_ZONE, parse(y)? - QUIET_ZONE, parse(n)?);
            if x + n > width || y >= width {
                return Err(format!("run {run} outside the code"));
            }
            for module in &mut modules[y * width + x..y * width + x + n] {
                if *module == Color::Dark {
                    return Err(format!("run {run} overlaps another"));
                }
                *module = Color::Dark;
            }
        }
        Ok(modules)
    }

    #[test]
    fn is_one_svg_element_with_size_and_label() -> Result<(), QrError> {
        let svg = qr_svg(URI)?;
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.contains("width=\"240\" height=\"240\""));
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("aria-label=\""));
        let side = QrCode::new(URI.as_bytes())?.width() + 2 * QUIET_ZONE;
        assert!(svg.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        // Every element is closed: the only ones are svg, rect and path.
        assert_eq!(svg.matches('<').count(), 4);
        assert_eq!(svg.matches("/>").count(), 2);
        Ok(())
    }

    #[test]
    fn has_no_style_for_the_csp() -> Result<(), QrError> {
        let svg = qr_svg(URI)?;
        assert!(!svg.to_ascii_lowercase().contains("style"), "{svg}");
        Ok(())
    }

    #[test]
    fn carries_nothing_of_the_secret_uri() -> Result<(), QrError> {
        let svg = qr_svg(URI)?;
        for part in [
            "otpauth", "JBSWY3DP", "alice", "example", "secret", "issuer", "sealmail",
        ] {
            assert!(!svg.contains(part), "{part} in {svg}");
        }
        // Outside the fixed frame there are only digits and path commands.
        let d = svg.split(" d=\"").nth(1).unwrap_or_default();
        let d = d.split('"').next().unwrap_or_default();
        assert!(
            d.chars().all(|c| c.is_ascii_digit() || "Mhvz -".contains(c)),
            "{d}"
        );
        Ok(())
    }

    #[test]
    fn path_draws_exactly_the_code_modules() -> Result<(), String> {
        for text in [URI, "a", "otpauth://totp/x?secret=AAAA"] {
            let code = QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
            let svg = qr_svg(text).map_err(|e| e.to_string())?;
            let drawn = modules_of(&svg, code.width())?;
            assert_eq!(drawn, code.to_colors(), "{text}");
            let dark = code.to_colors().iter().filter(|c| **c == Color::Dark).count();
            assert_eq!(drawn.iter().filter(|c| **c == Color::Dark).count(), dark);
        }
        Ok(())
    }

    #[test]
    fn too_long_text_is_an_error() {
        assert!(matches!(qr_svg(&"x".repeat(8000)), Err(QrError::DataTooLong)));
    }
}
