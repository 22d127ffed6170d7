//! The `deadletter` function: records DLQ messages, releases their holds, fails their sessions.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{deadletter, AppState};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = AppState::from_env().await?;
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let app = app.clone();
        async move { Ok::<_, Error>(deadletter::handle_batch(app, event.payload).await) }
    }))
    .await
}
