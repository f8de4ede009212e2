//! What operators watch: the daemon's metrics ([`metrics`]) and the HTTP
//! endpoints that serve them, `/metrics` (Prometheus text) and `/healthz`
//! (200, or 503 when the database does not answer within 2 s).

pub mod metrics;

pub use metrics::Metrics;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct EndpointState {
    pool: PgPool,
    metrics: Arc<Metrics>,
}

/// Serves `/healthz` and `/metrics` on `addr` until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(EndpointState { pool, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn healthz(State(state): State<EndpointState>) -> impl IntoResponse {
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await;
    match probe {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable: no answer within 2 s\n".to_string(),
        ),
    }
}

async fn metrics_page(State(state): State<EndpointState>) -> impl IntoResponse {
    let depth: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.status, count(a.id)
           FROM unnest(ARRAY['pending', 'running', 'compensating']) AS s(status)
           LEFT JOIN orgkeeper.pending_external_actions a ON a.status = s.status
          GROUP BY s.status ORDER BY s.status",
    )
    .fetch_all(&state.pool)
    .await
    .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&depth),
    )
}
