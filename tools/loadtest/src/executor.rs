//! The two ways of driving load.
//!
//! **Closed model** (k6 `ramping-vus`): VUs loop iteration → think time; a controller follows
//! the stages every 100 ms, waking parked VUs as the ramp rises and letting VUs park after
//! their current iteration as it falls. Throughput depends on how fast the system answers,
//! which is what the old script measured and what hides queueing.
//!
//! **Open model** (k6 `constant-arrival-rate` / `ramping-arrival-rate`, wrk2's correction):
//! iterations start on a schedule computed from the rate profile alone. Each one carries its
//! intended start time and latency is measured from it, so when the system (or the in-flight
//! bound) makes requests wait, the wait is in the numbers instead of silently lowering the rate.
//! At most `max_inflight` iterations run at once; an arrival that finds no free slot waits for
//! one (late, and measured as late); arrivals still waiting when the schedule ends, or still
//! unsent when the run is interrupted, are counted as `dropped_iterations`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::scenario::{iteration, World};
use crate::stages::{ArrivalSchedule, Profile, Think};

/// What VUs are told: how many should be active, and whether the run is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    target: usize,
    finished: bool,
}

/// Waits until the stop flag is raised (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for the tasks to finish their iterations for at most `grace`, then aborts the rest.
async fn wind_down(mut tasks: JoinSet<()>, grace: Duration) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Runs the closed model until the profile ends or `stop` is raised.
pub(crate) async fn closed(
    world: Arc<World>,
    start: Instant,
    profile: Profile,
    think: Think,
    graceful_stop: Duration,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let (control, rx) = watch::channel(Control {
        target: 0,
        finished: false,
    });
    let active = Arc::new(AtomicU64::new(0));
    let mut vus = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        let t = start.elapsed();
        let (Some(target), Some(level)) = (profile.vus_at(t), profile.level_at(t)) else {
            break;
        };
        while vus.len() < target {
            let id = vus.len();
            vus.spawn(vu(
                world.clone(),
                id,
                rx.clone(),
                active.clone(),
                think,
                seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
        }
        control.send_replace(Control {
            target,
            finished: false,
        });
        world
            .recorder
            .set_load(active.load(Ordering::Relaxed), level);
    }
    control.send_replace(Control {
        target: 0,
        finished: true,
    });
    wind_down(vus, graceful_stop).await;
    world.recorder.set_load(0, 0.0);
}

/// One virtual user.
async fn vu(
    world: Arc<World>,
    id: usize,
    mut control: watch::Receiver<Control>,
    active: Arc<AtomicU64>,
    think: Think,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let user = world.user(id as u64);
    let mut is_active = false;
    loop {
        let now = *control.borrow_and_update();
        if now.finished {
            break;
        }
        if id >= now.target {
            if is_active {
                active.fetch_sub(1, Ordering::Relaxed);
                is_active = false;
            }
            if control.changed().await.is_err() {
                break;
            }
            continue;
        }
        if !is_active {
            active.fetch_add(1, Ordering::Relaxed);
            is_active = true;
        }
        iteration(&world, user, Instant::now(), &mut rng).await;
        let pause = think.sample(&mut rng);
        if pause.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        let finished = async {
            loop {
                if control.changed().await.is_err() || control.borrow().finished {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = finished => {}
        }
    }
    if is_active {
        active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the open model until the schedule ends or `stop` is raised.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    world: Arc<World>,
    start: Instant,
    profile: Profile,
    max_inflight: usize,
    graceful_stop: Duration,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let end = start + profile.total();
    let slots = Arc::new(Semaphore::new(max_inflight.max(1)));
    let inflight = Arc::new(AtomicU64::new(0));
    let gauge = {
        let (world, inflight, profile) = (world.clone(), inflight.clone(), profile.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let level = profile.level_at(start.elapsed()).unwrap_or(0.0);
                world
                    .recorder
                    .set_load(inflight.load(Ordering::Relaxed), level);
            }
        })
    };
    let mut iterations = JoinSet::new();
    let mut schedule = ArrivalSchedule::new(profile);
    let mut arrival = 0_u64;
    while let Some(offset) = schedule.next() {
        let intended = start + offset;
        let interrupted = async {
            stopped(&mut stop).await;
        };
        let slot = async {
            tokio::time::sleep_until(intended).await;
            tokio::select! {
                slot = slots.clone().acquire_owned() => slot.ok(),
                _ = tokio::time::sleep_until(end) => None,
            }
        };
        let slot = tokio::select! {
            slot = slot => slot,
            _ = interrupted => None,
        };
        let Some(slot) = slot else {
            // This arrival and every later one were never sent.
            world.recorder.record_dropped(1 + schedule.count() as u64);
            break;
        };
        let (world, inflight) = (world.clone(), inflight.clone());
        let user = world.user(arrival);
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(arrival));
        arrival += 1;
        iterations.spawn(async move {
            inflight.fetch_add(1, Ordering::Relaxed);
            iteration(&world, user, intended, &mut rng).await;
            inflight.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
        while iterations.try_join_next().is_some() {}
    }
    wind_down(iterations, graceful_stop).await;
    gauge.abort();
    world.recorder.set_load(0, 0.0);
}
