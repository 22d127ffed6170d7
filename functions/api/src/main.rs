//! The `api` function: the user's sessions, balance, ledger and usage; health.

use lambda_http::{run, service_fn, Error, Request};
use shared::{routes, telemetry, AppState};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let state = AppState::from_env().await?;
    run(service_fn(|request: Request| {
        let state = &state;
        async move { Ok::<_, Error>(routes::api::handle(state, request).await) }
    }))
    .await
}
