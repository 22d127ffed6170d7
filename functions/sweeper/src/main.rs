//! The `sweeper` function: on a schedule, settles rendered videos and repairs stuck work.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::clock::deadline_from_epoch_ms;
use shared::sweeper::{sweep, Sweeper};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let sweeper = Sweeper::from_env().await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let sweeper = &sweeper;
        async move {
            let report = sweep(sweeper, deadline_from_epoch_ms(event.context.deadline)).await;
            Ok::<_, Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
