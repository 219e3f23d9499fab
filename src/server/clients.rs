//! Per-client request limits: one client (one peer IP address) may have at most `limit`
//! requests in flight; above that it is answered 429 `too_many_requests` at once, before its
//! body is read.
//!
//! Why in flight and not per second: what a flood exhausts is the server's concurrency (the
//! model slots and upload permits every client shares, and the bodies held meanwhile), not
//! its request rate — a search costs milliseconds to answer, and a slow-loris client holding
//! many connections open costs memory while sending nothing. Counting what a client holds
//! open bounds both, and never refuses a well-behaved client however fast it works: a browser
//! opens at most six connections to a host. The model slots and [`super::UploadGate`] still
//! bound the whole server; this keeps one client from taking all of them, so another client's
//! search or upload still gets a slot.
//!
//! Behind a reverse proxy every request comes from the proxy's address: set the limit there
//! (`--per-client 0` turns it off here).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;

use super::ApiError;

/// Requests in flight per client address, capped.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    limit: usize,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted request; dropping it (when the answer has been produced) frees its place.
#[derive(Debug)]
pub struct Admission {
    client: IpAddr,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ClientLimits {
    /// At most `limit` requests in flight per client; 0: no limit.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            in_flight: Arc::default(),
        }
    }

    /// The cap (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Clients with a request in flight now (the map never holds idle clients, so its size
    /// is bounded by the open connections, not by every address ever seen).
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a request from `client`, or says 429 when it already has `limit` in flight.
    pub fn admit(&self, client: IpAddr) -> Result<Option<Admission>, ApiError> {
        if self.limit == 0 {
            return Ok(None);
        }
        let mut in_flight = self.lock();
        let count = in_flight.entry(client).or_insert(0);
        if *count >= self.limit {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!(
                    "this client already has {} requests in progress (the server's per-client \
                     limit); wait for their answers before sending more",
                    self.limit
                ),
            ));
        }
        *count += 1;
        Ok(Some(Admission {
            client,
            in_flight: self.in_flight.clone(),
        }))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = in_flight.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.client);
            }
        }
    }
}

/// The middleware: admits or answers 429 (with `Retry-After`) before any handler or body
/// extractor runs. The health check is exempt: it costs nothing and monitors must reach it.
pub async fn limit_per_client(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let limits = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .map(|state| state.clients.clone());
    let client = req.peer_addr().map(|a| a.ip());
    let admission = match (limits, client) {
        (Some(limits), Some(client)) if req.path() != "/api/v1/health" => {
            match limits.admit(client) {
                Ok(admission) => admission,
                Err(e) => {
                    let mut response = actix_web::ResponseError::error_response(&e);
                    response.headers_mut().insert(
                        actix_web::http::header::RETRY_AFTER,
                        actix_web::http::header::HeaderValue::from_static("1"),
                    );
                    return Ok(req.into_response(response).map_into_right_body());
                }
            }
        }
        _ => None,
    };
    let response = next.call(req).await;
    drop(admission);
    response.map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_capped_and_others_are_not() {
        let limits = ClientLimits::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let second = limits.admit(a).unwrap();
        let refused = limits.admit(a).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "too_many_requests");
        // Another client is unaffected.
        let other = limits.admit(b).unwrap();
        assert_eq!(limits.clients(), 2);
        // A finished request frees its place; idle clients leave the map.
        drop(first);
        assert!(limits.admit(a).unwrap().is_some());
        drop((second, other));
        assert_eq!(limits.clients(), 0);
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = ClientLimits::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..1000).map(|_| limits.admit(a).unwrap()).collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(limits.clients(), 0);
    }
}
