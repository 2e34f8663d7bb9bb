//! The admin HTTP endpoint: JSON views of the node's actors, topics, partitions and
//! connections, Prometheus metrics, and the web console.
//!
//! Every GET reads the actor directory, the gauges actors publish into it and the metadata
//! image the controller publishes; none sends a message to an actor, so a busy or stuck actor
//! cannot stall the endpoint, and looking never changes what is looked at. The only route
//! that acts (crashing an actor) exists when the node runs with `--enable-fault-injection`.
//!
//! actix-web runs with one worker thread of its own (its own single-threaded runtime) and
//! without an actix System; the node stops it through its `ServerHandle`. JSON shapes are
//! documented in ADMIN.md.

mod metrics;
mod views;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use vltava_actors::node::NodeView;

/// Connections the admin endpoint serves at once; more wait in the kernel's backlog.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;
/// How long a client may take to send its request head.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for admin requests in progress.
pub const ADMIN_SHUTDOWN_TIMEOUT: u64 = 5;
/// Largest request body accepted (only fault-injection routes take a POST, with no body).
pub const ADMIN_BODY_BYTES_MAX: usize = 4096;

/// The console page, with its script and styles inline: nothing is fetched from elsewhere.
const CONSOLE_HTML: &str = include_str!("console.html");

/// How the endpoint is set up.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// When set, every route requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub fault_injection: bool,
}

/// What handlers share.
#[derive(Debug)]
struct AdminState {
    view: NodeView,
    options: AdminOptions,
}

/// Starts serving on `listener`; the returned handle stops the server.
pub fn start(
    listener: TcpListener,
    view: NodeView,
    options: AdminOptions,
) -> std::io::Result<ServerHandle> {
    let state = web::Data::new(AdminState { view, options });
    let fault_injection = state.options.fault_injection;
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(ADMIN_BODY_BYTES_MAX))
            .wrap(from_fn(authorize))
            .route("/", web::get().to(console))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .route("/actors", web::get().to(actors))
            .route("/actors/{id:.*}", web::get().to(actor))
            .route("/topics", web::get().to(topics))
            .route("/topics/{topic}", web::get().to(topic))
            .route("/partitions", web::get().to(partitions))
            .route("/connections", web::get().to(connections))
            .route("/cluster", web::get().to(cluster))
            .route("/resources", web::get().to(resources))
            .route("/groups", web::get().to(groups))
            .route("/groups/{group}", web::get().to(group))
            .route("/metrics", web::get().to(metrics));
        if fault_injection {
            app = app.route("/faults/actors/{id:.*}/crash", web::post().to(crash_actor));
        }
        app.default_service(web::to(not_found))
    })
    .workers(1)
    .max_connections(ADMIN_CONNECTIONS_MAX)
    .client_request_timeout(ADMIN_REQUEST_TIMEOUT)
    .shutdown_timeout(ADMIN_SHUTDOWN_TIMEOUT)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "admin endpoint stopped");
        }
    });
    Ok(handle)
}

/// A JSON error body with its status: `{"error": {"status": 404, "message": "..."}}`.
fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": { "status": status.as_u16(), "message": message.into() }
    }))
}

fn ok(body: &Value) -> HttpResponse {
    HttpResponse::Ok().json(body)
}

/// Checks the bearer token, when one is set, before any route runs.
async fn authorize(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let expected = request
        .app_data::<web::Data<AdminState>>()
        .and_then(|s| s.options.token.clone());
    if let Some(expected) = expected {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .or_else(|| console_token(&request));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), expected.as_bytes())) {
            tracing::warn!(path = %request.path(), peer = ?request.peer_addr(), "admin request without the right bearer token");
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this endpoint requires Authorization: Bearer <token>",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(request.into_response(response));
        }
    }
    Ok(next.call(request).await?.map_into_boxed_body())
}

/// The console page (and only it) also takes the token as `/?access_token=…` (RFC 6750's
/// query form), so a person can open it in a browser; the page then sends the header itself.
fn console_token(request: &ServiceRequest) -> Option<String> {
    if request.path() != "/" {
        return None;
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(request.query_string())
        .ok()
        .and_then(|q| q.get("access_token").cloned())
}

/// Compares secrets in time that does not depend on where they first differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", request.method(), request.path()),
    )
}

async fn console() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(CONSOLE_HTML)
}

async fn health() -> HttpResponse {
    ok(&json!({ "status": "ok" }))
}

async fn ready(state: web::Data<AdminState>) -> HttpResponse {
    if state.view.is_serving() {
        ok(&json!({ "ready": true }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "ready": false }))
    }
}

#[derive(Debug, serde::Deserialize)]
struct KindFilter {
    kind: Option<String>,
}

async fn actors(state: web::Data<AdminState>, query: web::Query<KindFilter>) -> HttpResponse {
    match views::actors(&state.view, query.kind.as_deref()) {
        Ok(body) => ok(&body),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn actor(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    match views::actor(&state.view, &id) {
        Some(body) => ok(&body),
        None => error(StatusCode::NOT_FOUND, format!("no actor {id}")),
    }
}

async fn topics(state: web::Data<AdminState>) -> HttpResponse {
    ok(&views::topics(&state.view))
}

async fn topic(state: web::Data<AdminState>, name: web::Path<String>) -> HttpResponse {
    match views::topic(&state.view, &name) {
        Some(body) => ok(&body),
        None => error(StatusCode::NOT_FOUND, format!("no topic {name}")),
    }
}

async fn partitions(state: web::Data<AdminState>) -> HttpResponse {
    ok(&views::partitions(&state.view))
}

async fn connections(state: web::Data<AdminState>) -> HttpResponse {
    ok(&views::connections(&state.view))
}

async fn groups(state: web::Data<AdminState>) -> HttpResponse {
    ok(&views::groups(&state.view))
}

async fn group(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    match views::group(&state.view, &id) {
        Some(body) => ok(&body),
        None => error(StatusCode::NOT_FOUND, format!("no group {id} on this node")),
    }
}

async fn cluster(state: web::Data<AdminState>) -> HttpResponse {
    ok(&views::cluster(&state.view))
}

async fn resources(state: web::Data<AdminState>) -> HttpResponse {
    ok(&views::resources(&state.view))
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render(&state.view))
}

async fn crash_actor(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    let Some(entry) = state.view.directory.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no actor {id}"));
    };
    if entry.kind != vltava_actors::directory::ActorKind::Partition {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "crash injection is supported for Partition actors, not {}",
                entry.kind.name()
            ),
        );
    }
    tracing::warn!(actor = %id, "fault injection: crashing an actor");
    match state.view.crash_partition(&id) {
        Ok(()) => HttpResponse::Accepted().json(json!({ "crashed": id.as_str() })),
        Err(message) => error(StatusCode::CONFLICT, message),
    }
}
