//! The operators' dashboard at `/dashboard`: one HTML page, a stylesheet and a few JavaScript
//! modules, embedded in the binary and served as they are (no template, no build step). The page
//! holds no data: the browser signs in with an API key (kept in `sessionStorage`) and calls the
//! HTTP API like any client, so what it shows follows the key's role and tenant and the API stays
//! the one place that decides.
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles and connections
//! from this origin only, no inline script or style, no frames, no forms posted anywhere.

/// The policy of every dashboard response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// An embedded file: its bytes and content type.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The bytes served.
    pub body: &'static [u8],
    /// The `Content-Type`.
    pub content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page itself (`/dashboard`).
pub const INDEX: Asset = Asset {
    body: include_bytes!("dashboard/index.html"),
    content_type: "text/html; charset=utf-8",
};

/// The files under `/dashboard/`, by name.
const ASSETS: &[(&str, Asset)] = &[
    (
        "style.css",
        Asset {
            body: include_bytes!("dashboard/style.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
    (
        "app.js",
        Asset {
            body: include_bytes!("dashboard/app.js"),
            content_type: JS,
        },
    ),
    (
        "api.js",
        Asset {
            body: include_bytes!("dashboard/api.js"),
            content_type: JS,
        },
    ),
    (
        "charts.js",
        Asset {
            body: include_bytes!("dashboard/charts.js"),
            content_type: JS,
        },
    ),
    (
        "pages.js",
        Asset {
            body: include_bytes!("dashboard/pages.js"),
            content_type: JS,
        },
    ),
    (
        "favicon.svg",
        Asset {
            body: include_bytes!("dashboard/favicon.svg"),
            content_type: "image/svg+xml",
        },
    ),
];

/// The file `name` under `/dashboard/`, if there is one (the page itself for an empty name).
pub fn asset(name: &str) -> Option<Asset> {
    if name.is_empty() {
        return Some(INDEX);
    }
    ASSETS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, asset)| *asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_found_by_name_only() {
        assert_eq!(asset("app.js").unwrap().content_type, JS);
        assert!(asset("").unwrap().content_type.starts_with("text/html"));
        for missing in ["../Cargo.toml", "app.js/", "APP.JS", "index.html"] {
            assert!(asset(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_from_elsewhere() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("style="), "inline style");
        assert!(!page.contains("http://") && !page.contains("https://"));
        for (name, asset) in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            assert!(
                !text.contains("https://") || *name == "favicon.svg",
                "{name}"
            );
            assert!(!text.contains("innerHTML"), "{name} builds HTML from text");
        }
    }
}
