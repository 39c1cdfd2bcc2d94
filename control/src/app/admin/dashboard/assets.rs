//! The page itself: plain HTML, CSS and JavaScript compiled into the
//! binary, no framework and nothing fetched from elsewhere, so it works
//! offline and through a tunnel. The control plane's admin port and
//! `isthmus dashboard` serve the same files under `/dashboard/`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const STYLE_CSS: &str = include_str!("style.css");

/// Where the page lives on both servers; its links are relative to it.
pub const PREFIX: &str = "/dashboard/";

/// The file at `rel` (the part of the path after `/dashboard/`).
pub fn asset(rel: &str) -> Option<(&'static str, &'static str)> {
    Some(match rel {
        "" | "index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => return None,
    })
}

fn with_headers(
    mut resp: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Always fresh: the state changes every second, and a new binary's page
    // must not run an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Only its own files and its own JSON; nothing inline, nothing remote.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    resp
}

/// A static file of the page, or `None` if `rel` names none.
pub fn response(rel: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = asset(rel)?;
    Some(with_headers(
        Response::new(Full::new(Bytes::from_static(body.as_bytes()))),
        content_type,
    ))
}

/// The state document as JSON.
pub fn json(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_headers(Response::new(Full::new(body.into())), "application/json")
}

/// `/dashboard` and `/` lead to `/dashboard/`, so relative links resolve.
pub fn redirect() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(PREFIX));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_its_own_files() {
        assert!(INDEX_HTML.contains("src=\"app.js\""));
        assert!(INDEX_HTML.contains("href=\"style.css\""));
        const SVG_NS: &str = "http://www.w3.org/2000/svg";
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            let remote: Vec<usize> = text
                .match_indices("://")
                .map(|(i, _)| i)
                .filter(|&i| !(i >= 4 && text[i - 4..].starts_with(SVG_NS)))
                .collect();
            assert!(remote.is_empty(), "remote URL at byte {remote:?}");
        }
        assert!(APP_JS.contains("state.json"));
        assert!(response("nope.js").is_none());
        let r = response("").expect("index");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}
