//! The `generator` function: runs the generations queued on SQS (partial batch failures).

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::generator::{handle_batch, Generator};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let generator = Arc::new(Generator::from_env().await?);
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let generator = generator.clone();
        let deadline = shared::clock::deadline_from_epoch_ms(event.context.deadline);
        async move { Ok::<_, Error>(handle_batch(generator, event.payload, deadline).await) }
    }))
    .await
}
