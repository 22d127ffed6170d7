//! The `admin` function: credit grants and dead letters (list, retry, delete, purge), for the
//! `admin` group.

use lambda_http::{run, service_fn, Error, Request};
use shared::{routes, telemetry, AppState};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let state = AppState::from_env().await?;
    run(service_fn(|request: Request| {
        let state = &state;
        async move { Ok::<_, Error>(routes::admin::handle(state, request).await) }
    }))
    .await
}
