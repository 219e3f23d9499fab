//! The web page's four files, embedded in the binary (no files are read at run time, so the
//! page cannot be swapped or traversed out of), with a strict Content-Security-Policy: the
//! page loads only its own script and style, no inline code, and shows images from the API
//! and from `blob:` URLs (the dropped image's preview).

use actix_web::{web, HttpRequest, HttpResponse};

/// The CSP sent with every page file.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `(URL path, content type, bytes)` of each embedded file.
pub const FILES: [(&str, &str, &[u8]); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/assets/app.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/assets/style.css"),
    ),
    (
        "/assets/icon.svg",
        "image/svg+xml",
        include_bytes!("../../web/assets/icon.svg"),
    ),
];

/// Adds `/`, `/index.html` and `/assets/*`.
pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .route("/index.html", web::get().to(page))
        .route("/assets/{name}", web::get().to(page))
        .default_service(web::to(not_found));
}

async fn page(req: HttpRequest) -> HttpResponse {
    let path = match req.path() {
        "/index.html" => "/",
        p => p,
    };
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .insert_header(("Cache-Control", "no-cache"))
            .body(*bytes),
        None => not_found(req).await,
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": "not_found",
        "message": format!("nothing at {}; the page is at / and the API under /api/v1", req.path()),
    }))
}
