//! The admin endpoint on its own address: `GET /healthz` and `GET /metrics`, plain HTTP/1.1,
//! one request per connection, served by hyper like the clients' upgrade requests. It carries no secrets and takes no input beyond the path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::upgrade::{self, Answer};

/// Bound on reading one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin endpoint until `cancel`. `draining` makes `/healthz` answer 503 so a load
/// balancer stops sending new sessions.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let (metrics, draining) = (metrics.clone(), draining.clone());
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, &draining)).await;
        });
    }
}

/// One admin connection: one request, answered on the relay's HTTP stack.
async fn answer(stream: TcpStream, metrics: &Metrics, draining: &AtomicBool) {
    let service = service_fn(|req: Request<Incoming>| {
        let answer = route(req.method(), req.uri().path(), metrics, draining);
        std::future::ready(Ok::<_, Infallible>(answer))
    });
    let _ = upgrade::builder()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The answer to `method` on `path`.
fn route(method: &Method, path: &str, metrics: &Metrics, draining: &AtomicBool) -> Answer {
    let (status, body) = match (method, path) {
        (&Method::GET, "/healthz") if draining.load(Ordering::Relaxed) => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n".to_owned()),
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics.render()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned()),
    };
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    upgrade::plain_text(status, body, content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let metrics = Metrics::default();
        let draining = AtomicBool::new(false);
        let get = |path: &str| route(&Method::GET, path, &metrics, &draining);
        assert_eq!(get("/healthz").status(), StatusCode::OK);
        assert_eq!(get("/nope").status(), StatusCode::NOT_FOUND);
        let metrics_answer = get("/metrics");
        assert_eq!(
            metrics_answer.headers()["content-type"],
            "text/plain; version=0.0.4"
        );
        draining.store(true, Ordering::Relaxed);
        let get = |path: &str| route(&Method::GET, path, &metrics, &draining);
        assert_eq!(get("/healthz").status(), StatusCode::SERVICE_UNAVAILABLE);
        let post = route(&Method::POST, "/healthz", &metrics, &draining);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
