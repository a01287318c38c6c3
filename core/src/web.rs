//! The web client (`web/` at the workspace root), compiled into the binary.
//!
//! Plain HTML, CSS and ES modules with no build step: `/` is the player page,
//! `/host` the host page, `/assets/*` what they load. [`asset`] maps a request
//! path to a content type and the file's bytes; the HTTP router serves them
//! for `GET`/`HEAD` before answering 404. Everything is small (a test keeps
//! the total under 100 KB) and needs nothing from outside the server.

macro_rules! file {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/", $path)) as &'static [u8]
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file served, by request path.
const FILES: &[(&str, &str, &[u8])] = &[
    ("/", HTML, file!("index.html")),
    ("/index.html", HTML, file!("index.html")),
    ("/host", HTML, file!("host.html")),
    ("/host.html", HTML, file!("host.html")),
    ("/assets/style.css", CSS, file!("assets/style.css")),
    ("/assets/common.js", JS, file!("assets/common.js")),
    ("/assets/player.js", JS, file!("assets/player.js")),
    ("/assets/host.js", JS, file!("assets/host.js")),
    ("/assets/qr.js", JS, file!("assets/qr.js")),
    ("/assets/backoff.js", JS, file!("assets/backoff.js")),
];

/// The pages' Content-Security-Policy: everything from this origin only
/// (scripts are ES modules, no inline script or style attribute; the QR
/// code is inline SVG, the results CSV a `blob:` download), the WebSocket
/// to this origin (`'self'` covers `ws:`/`wss:` of the same host), and no
/// framing (`frame-ancestors 'none'`: no clickjacking of the host's
/// buttons).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// Suggested `Cache-Control` for these responses: the files change with the
/// binary and carry no version in their names, so clients revalidate.
pub const CACHE_CONTROL: &str = "no-cache";

/// The web client's file for a request path (a query string is ignored):
/// `Some((content_type, bytes))`, or `None` when the path is not one of ours.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ct, body)| (*ct, *body))
}

/// The whole response for a `GET` or `HEAD` of one of the web client's
/// paths, or `None` (the router goes on matching). The router's hook is
/// `if let Some(r) = crate::web::response(&method, &path) { return Ok(r); }`.
pub fn response(
    method: &hyper::Method,
    path: &str,
) -> Option<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return None;
    }
    let (content_type, body) = asset(path)?;
    hyper::Response::builder()
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::CACHE_CONTROL, CACHE_CONTROL)
        .header("x-content-type-options", "nosniff")
        .header("content-security-policy", CSP)
        // For browsers older than CSP's frame-ancestors.
        .header("x-frame-options", "DENY")
        // The page's URL (quiz id) is nobody else's business.
        .header("referrer-policy", "no-referrer")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body)))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_assets_are_served() {
        let (ct, body) = asset("/").expect("player page");
        assert_eq!(ct, HTML);
        assert!(std::str::from_utf8(body)
            .unwrap()
            .contains("/assets/player.js"));
        let (_, body) = asset("/host?quiz=abc").expect("host page");
        assert!(std::str::from_utf8(body)
            .unwrap()
            .contains("/assets/host.js"));
        assert_eq!(asset("/assets/qr.js").map(|a| a.0), Some(JS));
        assert_eq!(asset("/assets/style.css").map(|a| a.0), Some(CSS));
    }

    #[test]
    fn response_carries_type_and_caching() {
        let r = response(&hyper::Method::GET, "/host").expect("host page");
        assert_eq!(r.status(), hyper::StatusCode::OK);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], HTML);
        assert_eq!(r.headers()[hyper::header::CACHE_CONTROL], CACHE_CONTROL);
        assert!(response(&hyper::Method::HEAD, "/assets/qr.js").is_some());
        assert!(response(&hyper::Method::POST, "/").is_none());
        assert!(response(&hyper::Method::GET, "/v1/quizzes/x").is_none());
    }

    /// The pages cannot be framed and load nothing from elsewhere; nothing
    /// in them needs what the policy forbids (no inline script or style).
    #[test]
    fn pages_carry_a_content_security_policy() {
        for path in ["/", "/host"] {
            let r = response(&hyper::Method::GET, path).expect("page");
            let csp = r.headers()["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(csp.contains("default-src 'self'"), "{csp}");
            assert_eq!(r.headers()["x-frame-options"], "DENY");
            assert_eq!(r.headers()["referrer-policy"], "no-referrer");
        }
        for (path, _, body) in FILES.iter().filter(|f| f.1 == HTML) {
            let page = std::str::from_utf8(body).unwrap();
            for (i, _) in page.match_indices("<script") {
                let tag = &page[i..i + page[i..].find('>').unwrap()];
                assert!(tag.contains("src="), "{path}: inline script {tag}");
            }
            assert!(!page.contains("style=\""), "{path}: inline style attribute");
            assert!(!page.contains("<style"), "{path}: inline style element");
            assert!(!page.contains(" onclick="), "{path}: inline handler");
        }
        // Nor may the modules build style attributes (the CSSOM is fine).
        for (path, _, body) in FILES.iter().filter(|f| f.1 == JS) {
            let js = std::str::from_utf8(body).unwrap();
            for bad in [
                "{ style:",
                ", style:",
                "setAttribute('style'",
                ".style.cssText",
            ] {
                assert!(!js.contains(bad), "{path}: {bad} is blocked by the CSP");
            }
        }
    }

    #[test]
    fn unknown_paths_are_not_ours() {
        for p in [
            "/v1/quizzes",
            "/assets/",
            "/assets/../Cargo.toml",
            "/hostx",
            "/healthz",
            "",
        ] {
            assert!(asset(p).is_none(), "{p}");
        }
    }

    #[test]
    fn every_module_a_page_imports_is_served() {
        // Catches a new file in web/assets that was not added to FILES.
        for (_, ct, body) in FILES {
            let text = std::str::from_utf8(body).unwrap();
            for part in text.split(['"', '\'']) {
                let is_ref = (part.starts_with("/assets/") || part.starts_with("./"))
                    && (part.ends_with(".js") || part.ends_with(".css"));
                if is_ref && *ct != CSS {
                    let path = part.replace("./", "/assets/");
                    assert!(
                        asset(&path).is_some(),
                        "{path} is referenced but not served"
                    );
                }
            }
        }
    }

    #[test]
    fn assets_stay_small() {
        // "/index.html" and "/host.html" repeat "/" and "/host".
        let total: usize = FILES
            .iter()
            .filter(|(p, _, _)| !p.ends_with(".html"))
            .map(|(_, _, b)| b.len())
            .sum();
        assert!(
            total < 100 * 1024,
            "web client is {total} bytes; keep it under 100 KB"
        );
    }
}
