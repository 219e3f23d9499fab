//! The OpenAPI 3.1 document of the API, with the server's actual limits and fusion settings.

use serde_json::{json, Value};

use super::params::{DEFAULT_K, FORMATS};
use super::Limits;
use crate::search::SearchSettings;

fn error_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_ok(description: &str, schema: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// `responses` with the entries of `more` added.
fn merged(mut responses: Value, more: Value) -> Value {
    if let (Value::Object(r), Value::Object(m)) = (&mut responses, more) {
        r.extend(m);
    }
    responses
}

/// The document.
pub fn document(search: &SearchSettings, limits: &Limits) -> Value {
    let k_param = json!({"name": "k", "in": "query", "required": false,
        "description": format!("Results wanted, 1 to {} (default {DEFAULT_K}); outside: 400 k_out_of_range.", search.max_k),
        "schema": {"type": "integer", "minimum": 1, "maximum": search.max_k}});
    let id_param = json!({"name": "id", "in": "path", "required": true,
        "description": "An image id (a whole number); anything else: 400.",
        "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}});
    // Text that is not only white space: what q and added texts must be.
    let text_schema = json!({"type": "string", "minLength": 1, "maxLength": search.max_query_chars, "pattern": "\\S"});
    let upload = json!({"required": true, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "contentMediaType": "application/octet-stream",
            "description": format!("The image (JPEG, PNG, WebP, GIF, BMP or TIFF), at most {} bytes.", limits.max_upload_bytes)}}}}}});
    let search_description = format!(
        "Text → image. Stages: the text's ITC vector; HNSW candidates scored exactly by the max \
         over each image's 32 query vectors (ITC); BM25 over captions, file and folder names; \
         first-stage score fused = itc + {bm_w} × bm25_share (bm25_share: the image's BM25 over \
         the query's best, 0 without a word match; the weight is fitted per model and caption \
         source{fitted}); ITM re-ranking of the top `rerank` first-stage candidates (default {rd}) \
         with the cached ViT output: score = fused + {itm_w} × itm_logit. Hits best first: \
         re-ranked ones by `score`, ties by ITC; then the others by fused score. `itm` is the \
         ITM match probability{calibrated}. `min_match` drops every hit whose `itm` is below it, \
         including hits that were not re-ranked (they have no `itm`). Filters apply before \
         candidates are taken, so a narrow filter still fills k. `sort=date` orders the same \
         relevant hits newest first by capture date (EXIF), else file modification time; images \
         with no date at all come last.",
        bm_w = search.fusion.bm25_weight,
        itm_w = search.fusion.itm_logit_weight,
        rd = search.rerank_default,
        fitted = if search.fusion.fitted {
            "; fitted for this store"
        } else {
            "; not fitted for this store's captions: the safe default"
        },
        calibrated = if search.fusion.calibration.is_identity() {
            ""
        } else {
            ", calibrated on held-out data"
        }
    );
    let search_params = json!([
        {"name": "q", "in": "query", "required": true, "description": format!("The text, at most {} characters; empty: 400 empty_query.", search.max_query_chars), "schema": text_schema},
        k_param,
        {"name": "min_match", "in": "query", "description": "Relevance cutoff on the ITM match probability, 0 to 1.", "schema": {"type": "number", "minimum": 0, "maximum": 1}},
        {"name": "folder", "in": "query", "description": "Only images under this folder (path prefix, whole components).", "schema": {"type": "string"}},
        {"name": "from", "in": "query", "description": "Only images dated on or after this day (YYYY-MM-DD, UTC). After `to`: no hits.", "schema": {"type": "string", "format": "date"}},
        {"name": "to", "in": "query", "description": "Only images dated on or before this day (YYYY-MM-DD, inclusive).", "schema": {"type": "string", "format": "date"}},
        {"name": "type", "in": "query", "description": "Only this file type.", "schema": {"type": "string", "enum": FORMATS}},
        {"name": "sort", "in": "query", "schema": {"type": "string", "enum": ["relevance", "date"], "default": "relevance"}},
        {"name": "rerank", "in": "query", "description": format!("Candidates re-ranked by ITM, 0 to {} (0: ITC + BM25 only).", search.max_rerank), "schema": {"type": "integer", "minimum": 0, "maximum": search.max_rerank}}
    ]);
    let search_body = json!({"type": "object", "required": ["q"], "additionalProperties": false, "properties": {
        "q": text_schema,
        "k": {"type": "integer", "minimum": 1, "maximum": search.max_k},
        "min_match": {"type": "number", "minimum": 0, "maximum": 1},
        "rerank": {"type": "integer", "minimum": 0, "maximum": search.max_rerank},
        "folder": {"type": "string"},
        "from": {"type": "string", "format": "date"},
        "to": {"type": "string", "format": "date"},
        "type": {"type": "string", "enum": FORMATS},
        "sort": {"type": "string", "enum": ["relevance", "date"]}}});
    let id_errors = |not_found: &str| {
        json!({
        "400": error_response("The id is not a whole number, or a parameter is bad (k)."),
        "404": error_response(not_found)})
    };
    let too_many = json!({"description": format!("too_many_requests: this client already has {} requests in progress; retry after the Retry-After seconds.", limits.per_client),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let errors = json!({
        "400": error_response("Bad input: bad_request, invalid_json, empty_query, query_too_long, k_out_of_range. Empty values of typed parameters (k=, type=) are bad input, not \"not given\"."),
        "413": error_response("payload_too_large."),
        "415": error_response("unsupported_media: the body is not of the expected type, or the upload is not a decodable image."),
        "429": too_many.clone(),
        "503": error_response("busy: every model slot stayed busy; retry shortly.")
    });
    let with_errors = |responses: Value| merged(responses, errors.clone());
    // Every route but /health may answer 429 (see server::clients).
    let limited = |responses: Value| merged(responses, json!({"429": too_many.clone()}));
    let bearer = json!([{"bearer": []}]);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "quarry", "version": "1",
                 "description": "Image–text search over one store with BLIP-2. Errors are {\"error\": code, \"message\": sentence}; 4xx for the request's faults, 5xx only for the server's. Same-origin only: no CORS headers are ever sent and preflight (OPTIONS) requests get 405, so another site's page open in the user's browser can neither read results nor add texts or start jobs."},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "Needed for POST /texts and POST /index when the server runs with --token."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string", "enum": ["bad_request", "invalid_json", "query_too_long", "k_out_of_range", "empty_query", "not_found", "method_not_allowed", "payload_too_large", "unsupported_media", "unauthorized", "busy", "too_many_requests", "internal"]},
                    "message": {"type": "string"}}},
                "Scores": {"type": "object", "properties": {
                    "itc": {"type": "number", "description": "Max over the image's 32 query vectors of the dot with the text vector."},
                    "itc_rank": {"type": ["integer", "null"], "description": "Rank in the vector list (1 = best); null when found by words only."},
                    "bm25": {"type": ["number", "null"]},
                    "bm25_rank": {"type": ["integer", "null"]},
                    "bm25_share": {"type": "number", "description": "BM25 over the query's best BM25; 0 without a word match."},
                    "fused": {"type": "number", "description": "First-stage score: itc + β × bm25_share."},
                    "itm": {"type": ["number", "null"], "description": "ITM match probability (calibrated when the model folder has a calibration); null when not re-ranked."},
                    "itm_logit": {"type": ["number", "null"], "description": "ITM class-1 logit; null when not re-ranked."},
                    "score": {"type": "number", "description": "What ordered the hit: fused + w × itm_logit when re-ranked, else fused."}}},
                "Image": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "path": {"type": "string"}, "caption": {"type": ["string", "null"]},
                    "width": {"type": "integer"}, "height": {"type": "integer"}, "format": {"type": "string"},
                    "captured_at": {"type": ["string", "null"]}, "thumbnail": {"type": "string"}, "file": {"type": "string"},
                    "scores": {"$ref": "#/components/schemas/Scores"}}},
                "Timing": {"type": "object", "description": "Milliseconds per stage.", "properties": {
                    "encode": {"type": "number"}, "ann": {"type": "number"}, "bm25": {"type": "number"},
                    "fusion": {"type": "number"}, "itm": {"type": "number"}, "total": {"type": "number"}}},
                "SearchResults": {"type": "object", "properties": {
                    "query": {"type": "string"}, "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                    "reranked": {"type": "integer"}, "timing_ms": {"$ref": "#/components/schemas/Timing"}}},
                "TextResults": {"type": "object", "properties": {"hits": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "text": {"type": "string"}, "source": {"type": "string", "enum": ["caption", "user"]},
                    "image_id": {"type": ["integer", "null"]},
                    "scores": {"type": "object", "properties": {"itc": {"type": "number"}, "itm": {"type": ["number", "null"]}}}}}}}},
                "SimilarResults": {"type": "object", "properties": {"hits": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}}},
                "Job": {"type": "object", "properties": {
                    "job": {"type": "integer"}, "state": {"type": "string", "enum": ["idle", "running", "done", "failed"]},
                    "done": {"type": "integer"}, "total": {"type": "integer"}, "failed": {"type": "integer"},
                    "rate": {"type": "number"}, "eta_s": {"type": ["number", "null"]}, "message": {"type": "string"},
                    "origin": {"type": "string", "enum": ["request", "watch"]},
                    "watching": {"type": "array", "items": {"type": "string"}}}}
            }
        },
        "paths": {
            "/health": {"get": {"summary": "Ready check", "responses": {"200": {"description": "{\"status\": \"ok\", \"images\": N} (images null while a commit holds the library)"}}}},
            "/stats": {"get": {"summary": "Store counts, models, defaults and limits",
                "responses": limited(json!({"200": {"description": "{images, vectors, captions, texts, failed, feature_cache_bytes, model: {retrieval, captioner}, rerank_default, limits: {max_k, max_query_chars, max_rerank, max_upload_bytes, max_texts, per_client}, fusion: {bm25_weight, itm_logit_weight, calibration: {scale, bias}, caption_source, fitted}, caption_quality: {captions, distinct, distinct_ratio, most_common, most_common_count, uninformative}, model_slots}"}}))}},
            "/search": {
                "get": {"summary": "Text → image", "description": search_description, "parameters": search_params,
                        "responses": with_errors(json!({"200": json_ok("Hits best first (or by date).", "SearchResults")}))},
                "post": {"summary": "Text → image, parameters as a JSON object", "description": "The same fields as the GET parameters, typed: numbers are JSON numbers, the rest strings; unknown fields: 400.",
                         "requestBody": {"required": true, "content": {"application/json": {"schema": search_body}}},
                         "responses": with_errors(json!({"200": json_ok("As GET.", "SearchResults")}))}
            },
            "/image-to-text": {"post": {"summary": "Image → text",
                "description": "The uploaded image's 32 ITC query vectors against the text index (captions of indexed images and texts added by users), scored by the max over the 32 vectors; the best `rerank` (default the server's) re-ranked by ITM against the uploaded image's own ViT output: by match probability, ties by ITC.",
                "parameters": [k_param], "requestBody": upload,
                "responses": with_errors(json!({"200": json_ok("Texts best first.", "TextResults")}))}},
            "/image-to-image": {"post": {"summary": "Image → image (uploaded)",
                "description": "similarity(A, B) = max over the 32 × 32 pairs of A's and B's ITC query vectors of their dot product (cosine; the vectors are unit). It is the ITC max-sim with an image in place of the text: two images are similar when some query vector of one is matched almost exactly by one of the other, so one shared subject suffices; a mean over pairs would blur what each query vector specialises in. Exact scores; the uploaded image is not stored.",
                "parameters": [k_param], "requestBody": upload,
                "responses": with_errors(json!({"200": json_ok("Most similar first; scores: {similarity}.", "SimilarResults")}))}},
            "/images/{id}": {"get": {"summary": "An image's metadata (as a hit, plus size, camera, indexed_batch, date_s)", "parameters": [id_param],
                "responses": limited(merged(json!({"200": json_ok("The image.", "Image")}), id_errors("No such image.")))}},
            "/images/{id}/thumbnail": {"get": {"summary": format!("JPEG, longest side at most {} px, generated once and cached in the store folder", super::routes::THUMBNAIL_SIDE), "parameters": [id_param],
                "responses": limited(merged(json!({"200": {"description": "image/jpeg", "content": {"image/jpeg": {}}}}), id_errors("No such image, or its file is gone.")))}},
            "/images/{id}/file": {"get": {"summary": "The original file (only paths recorded in the store are ever read)", "parameters": [id_param],
                "responses": limited(merged(json!({"200": {"description": "The file, with its image content type."}}), id_errors("No such image, or its file is gone.")))}},
            "/images/{id}/similar": {"get": {"summary": "Image → image for an indexed image (itself excluded); similarity as for /image-to-image", "parameters": [id_param, k_param],
                "responses": limited(merged(json!({"200": json_ok("Most similar first.", "SimilarResults")}), id_errors("No such image.")))}},
            "/texts": {"post": {"summary": "Add texts for image → text", "security": bearer,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["texts"], "additionalProperties": false, "properties": {"texts": {"type": "array", "items": text_schema, "minItems": 1, "maxItems": limits.max_texts}}}}}},
                "responses": with_errors(json!({"201": {"description": "{\"ids\": [..]}"}, "401": error_response("unauthorized")}))}},
            "/index": {
                "post": {"summary": "Start an indexing job over folders on the server (one at a time)", "security": bearer,
                    "description": "Paths are absolute, as the server sees them, existing, and under the server's --index-root folders when it has any (else 400).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["paths"], "additionalProperties": false, "properties": {"paths": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "pattern": "^/"}}}}}}},
                    "responses": merged(with_errors(json!({"202": {"description": "{\"job\": n}"}, "401": error_response("unauthorized")})),
                        json!({"429": {"description": format!("busy: a job is running; or too_many_requests: this client already has {} requests in progress (with Retry-After).", limits.per_client),
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}))},
                "get": {"summary": "The current or last job's progress", "responses": limited(json!({"200": json_ok("Progress.", "Job")}))}
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": limited(json!({"200": {"description": "OpenAPI 3.1"}}))}}
        }
    })
}
