//! The `/api/v1` handlers. Each checks its input first (4xx with a clear message), then does
//! model work through the [`ModelPool`](super::ModelPool) and file work on the blocking pool.

use std::path::{Path, PathBuf};

use actix_multipart::Multipart;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::params::{parse_k, parse_rerank, text_query, Source};
use super::{ApiError, AppState};
use crate::search::{HitScores, ImageResults, TextResults, Timing};
use crate::store::{BatchWrite, ImageRecord, NewText, TextSource};

type State = web::Data<AppState>;

/// Adds the API routes.
pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .wrap(from_fn(super::clients::limit_per_client))
            .service(resource("/health", "GET").route(web::get().to(health)))
            .service(resource("/stats", "GET").route(web::get().to(stats)))
            .service(
                resource("/search", "GET, POST")
                    .route(web::get().to(search_get))
                    .route(web::post().to(search_post)),
            )
            .service(resource("/image-to-text", "POST").route(web::post().to(image_to_text)))
            .service(resource("/image-to-image", "POST").route(web::post().to(image_to_image)))
            .service(resource("/images/{id}", "GET").route(web::get().to(image_meta)))
            .service(resource("/images/{id}/thumbnail", "GET").route(web::get().to(thumbnail)))
            .service(resource("/images/{id}/file", "GET").route(web::get().to(original)))
            .service(resource("/images/{id}/similar", "GET").route(web::get().to(similar)))
            .service(
                resource("/texts", "POST")
                    .wrap(from_fn(token_before_body))
                    .route(web::post().to(add_texts)),
            )
            .service(
                resource("/index", "GET, POST")
                    .wrap(from_fn(token_before_body))
                    .route(web::post().to(start_index))
                    .route(web::get().to(index_status)),
            )
            .service(resource("/openapi.json", "GET").route(web::get().to(openapi)))
            .default_service(web::to(api_not_found)),
    );
}

/// A route's resource: methods it does not serve get 405 with the `Allow` header RFC 9110
/// asks for (`allowed`, as written there).
fn resource(path: &str, allowed: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        HttpResponse::MethodNotAllowed()
            .insert_header(("Allow", allowed))
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({
                "error": "method_not_allowed",
                "message": format!("{} {} is not served; this route takes {allowed}", req.method(), req.path()),
            }))
    }))
}

/// Checks the token of writes before anything reads the body: a request without the token is
/// answered 401 whatever it carries (a malformed body must not reveal how it would be parsed).
async fn token_before_body(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == actix_web::http::Method::POST {
        if let Some(state) = req.app_data::<State>() {
            if let Err(e) = check_token(state, req.request()) {
                // Answered here, as a response (not an error), so it reads the same to every
                // client and test harness.
                let response = actix_web::ResponseError::error_response(&e);
                return Ok(req.into_response(response).map_into_right_body());
            }
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

async fn api_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no API route {} {}; see /api/v1/openapi.json",
        req.method(),
        req.path()
    )))
}

fn check_token(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare without an early exit so the time taken does not reveal the matching prefix.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this action needs the server's token: send Authorization: Bearer <token>",
        ))
    }
}

async fn health(state: State) -> HttpResponse {
    // try_read: a commit in progress must not delay the health check.
    let images = state
        .library
        .try_read()
        .ok()
        .map(|l| l.image_index().owners());
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"status": "ok", "images": images}))
}

async fn stats(state: State) -> Result<HttpResponse, ApiError> {
    let s = state.clone();
    let (counts, caption_quality) = web::block(move || {
        let library = s.read();
        Ok::<_, crate::library::LibraryError>((
            library.counts()?,
            library.store().caption_quality()?,
        ))
    })
    .await
    .map_err(ApiError::internal)??;
    let search = &state.search;
    Ok(HttpResponse::Ok().json(json!({
        "images": counts.images,
        "vectors": counts.vectors,
        "captions": counts.captions,
        "texts": counts.texts,
        "failed": counts.failed,
        "feature_cache_bytes": counts.feature_cache_bytes,
        "model": {
            "retrieval": state.identity.retrieval.name,
            "captioner": state.identity.captioner.as_ref().map(|c| &c.name),
        },
        "rerank_default": search.rerank_default,
        "limits": {
            "max_k": search.max_k,
            "max_query_chars": search.max_query_chars,
            "max_rerank": search.max_rerank,
            "max_upload_bytes": state.limits.max_upload_bytes,
            "max_texts": state.limits.max_texts,
            "per_client": state.limits.per_client,
        },
        "fusion": search.fusion,
        "caption_quality": caption_quality,
        "model_slots": {"size": state.pool.size(), "in_use": state.pool.in_use()},
    })))
}

/// An image as the API shows it (a hit, or the metadata route's base).
fn image_json(r: &ImageRecord) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "id": r.id,
        "path": r.path.to_string_lossy(),
        "caption": r.caption,
        "width": r.width,
        "height": r.height,
        "format": r.format,
        "captured_at": r.captured_at,
        "thumbnail": format!("/api/v1/images/{}/thumbnail", r.id),
        "file": format!("/api/v1/images/{}/file", r.id),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

fn timing_json(t: &Timing) -> Value {
    json!(t)
}

fn scores_json(s: &HitScores) -> Value {
    json!(s)
}

fn search_json(query: &str, results: &ImageResults) -> Value {
    let hits: Vec<Value> = results
        .hits
        .iter()
        .map(|h| {
            let mut m = image_json(&h.record);
            m.insert("scores".into(), scores_json(&h.scores));
            Value::Object(m)
        })
        .collect();
    json!({
        "query": query,
        "hits": hits,
        "reranked": results.reranked,
        "timing_ms": timing_json(&results.timing),
    })
}

async fn run_search(
    state: State,
    query: crate::search::TextQuery,
) -> Result<HttpResponse, ApiError> {
    // Cheap checks before waiting for a model slot.
    let chars = query.text.chars().count();
    if chars > state.search.max_query_chars {
        return Err(crate::search::SearchError::QueryTooLong {
            chars,
            max: state.search.max_query_chars,
        }
        .into());
    }
    if query.text.trim().is_empty() {
        return Err(crate::search::SearchError::EmptyQuery.into());
    }
    let s = state.clone();
    let text = query.text.clone();
    let results = state
        .pool
        .run(move || {
            let searcher = AppState::searcher(&s.models, s.search.clone());
            searcher.search_text(&s.read(), &query)
        })
        .await??;
    Ok(HttpResponse::Ok().json(search_json(&text, &results)))
}

async fn search_get(
    state: State,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let values: Vec<(String, Value)> = query
        .into_inner()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let q = text_query(
        values.iter().map(|(k, v)| (k.as_str(), v)),
        Source::Query,
        state.search.max_k,
    )?;
    run_search(state, q).await
}

async fn search_post(state: State, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let Value::Object(map) = body.into_inner() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object such as {\"q\": \"a red circle\", \"k\": 10}",
        ));
    };
    let q = text_query(
        map.iter().map(|(k, v)| (k.as_str(), v)),
        Source::Json,
        state.search.max_k,
    )?;
    run_search(state, q).await
}

/// Reads the `image` file field of a multipart body, within the upload limit.
async fn upload(
    req: &HttpRequest,
    mut form: Multipart,
    limit: usize,
) -> Result<(Vec<u8>, String), ApiError> {
    if let Some(len) = req
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit + 64 * 1024 {
            return Err(ApiError::too_large(limit));
        }
    }
    let malformed = |e: actix_multipart::MultipartError| {
        use actix_multipart::MultipartError as M;
        match e {
            M::ContentTypeMissing | M::ContentTypeParse | M::ContentTypeIncompatible => {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media",
                    "send the image as multipart/form-data with a file field named `image`",
                )
            }
            other => ApiError::bad_request(format!("the multipart body is malformed: {other}")),
        }
    };
    while let Some(field) = form.next().await {
        let mut field = field.map_err(malformed)?;
        if field.name() != Some("image") {
            // Drain and ignore other fields.
            while let Some(chunk) = field.next().await {
                chunk.map_err(malformed)?;
            }
            continue;
        }
        let name = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .unwrap_or("upload")
            .to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(malformed)?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.is_empty() {
            return Err(ApiError::bad_request("the `image` field is empty"));
        }
        return Ok((bytes, name));
    }
    Err(ApiError::bad_request(
        "the multipart body has no file field named `image`",
    ))
}

#[derive(Debug, Deserialize)]
struct KParam {
    k: Option<String>,
    rerank: Option<String>,
}

fn text_results_json(results: &TextResults) -> Value {
    let hits: Vec<Value> = results
        .hits
        .iter()
        .map(|h| {
            let (source, image_id) = match h.source {
                TextSource::Caption { image } => ("caption", Some(image)),
                TextSource::User => ("user", None),
            };
            json!({"id": h.id, "text": h.text, "source": source, "image_id": image_id,
                   "scores": {"itc": h.itc, "itm": h.itm, "score": h.score}})
        })
        .collect();
    json!({"hits": hits, "reranked": results.reranked, "timing_ms": timing_json(&results.timing)})
}

fn similar_json(results: &crate::search::SimilarResults) -> Value {
    let hits: Vec<Value> = results
        .hits
        .iter()
        .map(|h| {
            let mut m = image_json(&h.record);
            m.insert("scores".into(), json!({"similarity": h.similarity}));
            Value::Object(m)
        })
        .collect();
    json!({"hits": hits, "timing_ms": timing_json(&results.timing)})
}

async fn image_to_text(
    state: State,
    req: HttpRequest,
    params: web::Query<KParam>,
    form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let k = parse_k(params.k.as_deref(), state.search.max_k)?;
    let rerank = parse_rerank(params.rerank.as_deref())?;
    // Held until the answer is computed: bounds the bodies in memory (see UploadGate).
    let _upload_permit = state.uploads.enter().await?;
    let (bytes, name) = upload(&req, form, state.limits.max_upload_bytes).await?;
    let s = state.clone();
    let results = state
        .pool
        .run(move || {
            let searcher = AppState::searcher(&s.models, s.search.clone());
            let image = searcher.encode_image_bytes(&bytes, &name)?;
            searcher.image_to_text(&s.read(), &image, k, rerank)
        })
        .await??;
    Ok(HttpResponse::Ok().json(text_results_json(&results)))
}

async fn image_to_image(
    state: State,
    req: HttpRequest,
    params: web::Query<KParam>,
    form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let k = parse_k(params.k.as_deref(), state.search.max_k)?;
    // Held until the answer is computed: bounds the bodies in memory (see UploadGate).
    let _upload_permit = state.uploads.enter().await?;
    let (bytes, name) = upload(&req, form, state.limits.max_upload_bytes).await?;
    let s = state.clone();
    let results = state
        .pool
        .run(move || {
            let searcher = AppState::searcher(&s.models, s.search.clone());
            let image = searcher.encode_image_bytes(&bytes, &name)?;
            searcher.similar_to_upload(&s.read(), &image, k)
        })
        .await??;
    Ok(HttpResponse::Ok().json(similar_json(&results)))
}

async fn similar(
    state: State,
    id: web::Path<u64>,
    params: web::Query<KParam>,
) -> Result<HttpResponse, ApiError> {
    let k = parse_k(params.k.as_deref(), state.search.max_k)?;
    let id = id.into_inner();
    let s = state.clone();
    // No model work: the indexed image's vectors are in the store.
    let results = web::block(move || {
        let searcher = AppState::searcher(&s.models, s.search.clone());
        searcher.similar_images(&s.read(), id, k)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(similar_json(&results)))
}

async fn record(state: &State, id: u64) -> Result<ImageRecord, ApiError> {
    let s = state.clone();
    web::block(move || s.read().store().image(id))
        .await
        .map_err(ApiError::internal)??
        .ok_or_else(|| ApiError::not_found(format!("no image with id {id} in this store")))
}

async fn image_meta(state: State, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let r = record(&state, id.into_inner()).await?;
    let mut m = image_json(&r);
    m.insert("size".into(), json!(r.size));
    m.insert(
        "camera".into(),
        json!({"make": r.camera_make, "model": r.camera_model}),
    );
    m.insert("indexed_batch".into(), json!(r.indexed_batch));
    m.insert("date_s".into(), json!(r.date_seconds()));
    Ok(HttpResponse::Ok().json(Value::Object(m)))
}

fn content_type(format: &str) -> &'static str {
    match format {
        "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tiff" => "image/tiff",
        "heic" => "image/heic",
        "avif" => "image/avif",
        "jxl" => "image/jxl",
        _ => "application/octet-stream",
    }
}

/// The cached thumbnail's path; the content hash in the name makes a changed file's old
/// thumbnail unreachable.
fn thumbnail_path(dir: &Path, r: &ImageRecord) -> PathBuf {
    dir.join(format!("{}-{:032x}.jpg", r.id, r.content_hash))
}

/// Longest side of a thumbnail, pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

fn make_thumbnail(source: &Path, target: &Path) -> Result<Vec<u8>, String> {
    let rgb = crate::indexer::decode_file(source, crate::indexer::DecodeLimits::default())
        .map_err(|e| e.to_string())?;
    let (w, h) = rgb.dimensions();
    let scale = (THUMBNAIL_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let small = image::imageops::thumbnail(&rgb, tw, th);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&small)
        .map_err(|e| e.to_string())?;
    // Write to a temporary name, then rename: a reader never sees half a file.
    if let Some(dir) = target.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = target.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &bytes).is_ok() && std::fs::rename(&tmp, target).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(bytes)
}

async fn thumbnail(state: State, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let r = record(&state, id.into_inner()).await?;
    let target = thumbnail_path(&state.thumbnails, &r);
    let id = r.id;
    let bytes = web::block(move || match std::fs::read(&target) {
        Ok(bytes) => Ok(bytes),
        Err(_) => make_thumbnail(&r.path, &target),
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        ApiError::not_found(format!(
            "image {id}'s file cannot be read for a thumbnail (moved or deleted? re-index): {e}"
        ))
    })?;
    Ok(HttpResponse::Ok()
        .content_type("image/jpeg")
        .insert_header(("Cache-Control", "private, max-age=86400"))
        .body(bytes))
}

async fn original(state: State, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    // Only the path recorded for this id is ever opened: no part of the request names a file.
    let r = record(&state, id.into_inner()).await?;
    let path = r.path.clone();
    let bytes = web::block(move || std::fs::read(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            ApiError::not_found(format!(
                "image {}'s file {} cannot be read (moved or deleted? re-index): {e}",
                r.id,
                r.path.display()
            ))
        })?;
    Ok(HttpResponse::Ok()
        .content_type(content_type(&r.format))
        .insert_header(("Cache-Control", "private, max-age=3600"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(bytes))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextsBody {
    texts: Vec<String>,
}

/// The token was checked before the body was read ([`token_before_body`]).
async fn add_texts(state: State, body: web::Json<TextsBody>) -> Result<HttpResponse, ApiError> {
    let texts = body.into_inner().texts;
    if texts.is_empty() {
        return Err(ApiError::bad_request(
            "`texts` is empty: give at least one text",
        ));
    }
    if texts.len() > state.limits.max_texts {
        return Err(ApiError::bad_request(format!(
            "{} texts given; at most {} per request",
            texts.len(),
            state.limits.max_texts
        )));
    }
    let max = state.search.max_query_chars;
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(ApiError::bad_request(format!("text {i} is empty")));
        }
        if t.chars().count() > max {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "query_too_long",
                format!("text {i} is longer than {max} characters"),
            ));
        }
    }
    let s = state.clone();
    let ids = state
        .pool
        .run(move || -> Result<Vec<u64>, ApiError> {
            let searcher = AppState::searcher(&s.models, s.search.clone());
            let mut write = BatchWrite::default();
            for text in &texts {
                let embedding = searcher.embed_text(text)?;
                write.new_texts.push(NewText {
                    text: text.clone(),
                    embedding,
                });
            }
            let receipt = s
                .library
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .commit(&write)?;
            Ok(receipt.text_ids)
        })
        .await??;
    Ok(HttpResponse::Created().json(json!({"ids": ids})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexBody {
    paths: Vec<String>,
}

/// The token was checked before the body was read ([`token_before_body`]).
async fn start_index(state: State, body: web::Json<IndexBody>) -> Result<HttpResponse, ApiError> {
    let paths: Vec<PathBuf> = body
        .into_inner()
        .paths
        .into_iter()
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        return Err(ApiError::bad_request(
            "`paths` is empty: give folders or files to index",
        ));
    }
    for p in &paths {
        if !p.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "{} is not an absolute path; give folders as the server sees them",
                p.display()
            )));
        }
        if !p.exists() {
            return Err(ApiError::bad_request(format!(
                "{} does not exist on the server",
                p.display()
            )));
        }
        // Compared resolved (`..` and links followed), so `/library/../etc` is not under
        // `/library`.
        let resolved = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let inside = |r: &PathBuf| {
            resolved.starts_with(std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()))
        };
        if !state.index_roots.is_empty() && !state.index_roots.iter().any(inside) {
            return Err(ApiError::bad_request(format!(
                "{} is outside the folders this server indexes ({})",
                p.display(),
                state
                    .index_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    match state
        .jobs
        .start(state.library.clone(), state.models.clone(), paths)
    {
        Some(job) => Ok(HttpResponse::Accepted().json(json!({"job": job}))),
        None => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "an indexing job is already running; follow it with GET /api/v1/index",
        )),
    }
}

async fn index_status(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(state.jobs.status())
}

async fn openapi(state: State) -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document(&state.search, &state.limits))
}
