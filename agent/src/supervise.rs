//! Supervision of the agent's background tasks (OTLP sender and ticker, the HTTP server, the pod
//! watcher). None of them is meant to end before shutdown, so any end — a return, a panic, an
//! abort — is a failure: it is recorded with its reason, `/readyz` turns unready with that
//! reason, and the run loop hears of it ([`Supervisor::failed`]) while JSONL collection goes on.

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    sync::Notify,
    task::{AbortHandle, JoinHandle},
};

/// A background task that ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub task: &'static str,
    pub reason: String,
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "background task {} {}", self.task, self.reason)
    }
}

#[derive(Debug, Default)]
pub struct Supervisor {
    stopping: AtomicBool,
    tasks: Mutex<Vec<(&'static str, AbortHandle)>>,
    failures: Mutex<Vec<TaskFailure>>,
    /// Failures already handed to [`Supervisor::failed`].
    seen: AtomicUsize,
    notify: Notify,
}

/// Reports the end of its task when dropped: the future returned (`returned`), panicked
/// (dropped while unwinding) or was aborted (dropped at an await point, or before it first ran:
/// the guard is moved into the task, not created by it).
struct Guard {
    sup: std::sync::Arc<Supervisor>,
    task: &'static str,
    returned: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let reason = if self.returned {
            "stopped"
        } else if std::thread::panicking() {
            "panicked"
        } else {
            "was cancelled"
        };
        self.sup.record(self.task, reason);
    }
}

impl Supervisor {
    /// Spawns `fut` as the supervised task `name` (must be called inside a tokio runtime).
    pub fn spawn<F>(self: &std::sync::Arc<Self>, name: &'static str, fut: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let guard = Guard { sup: self.clone(), task: name, returned: false };
        let handle = tokio::spawn(async move {
            let mut guard = guard;
            fut.await;
            guard.returned = true;
        });
        self.watch(name, handle.abort_handle());
        handle
    }

    /// Supervises a task spawned elsewhere: its end is noticed by [`Supervisor::poll`] (called by
    /// `/readyz` and every interval), with the reason `stopped`.
    pub fn watch(&self, name: &'static str, handle: AbortHandle) {
        self.tasks.lock().unwrap().push((name, handle));
    }

    /// Aborts the task `name` (an operator's or a test's way to kill it; before
    /// [`Supervisor::stopping`] that is a failure like any other end); `false` when there is none.
    pub fn abort(&self, name: &'static str) -> bool {
        let tasks = self.tasks.lock().unwrap();
        let found: Vec<_> = tasks.iter().filter(|(n, _)| *n == name).collect();
        for (_, h) in &found {
            h.abort();
        }
        !found.is_empty()
    }

    /// Shutdown has begun: tasks ending from now on are not failures.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Records watched tasks that have finished.
    pub fn poll(&self) {
        let finished: Vec<&'static str> =
            self.tasks.lock().unwrap().iter().filter(|(_, h)| h.is_finished()).map(|(n, _)| *n).collect();
        for name in finished {
            self.record(name, "stopped");
        }
    }

    /// Every failure so far, first one first.
    pub fn failures(&self) -> Vec<TaskFailure> {
        self.poll();
        self.failures.lock().unwrap().clone()
    }

    /// Waits for the next failure not yet returned by this method.
    pub async fn failed(&self) -> TaskFailure {
        loop {
            let notified = self.notify.notified();
            {
                let failures = self.failures.lock().unwrap();
                let seen = self.seen.load(Ordering::Acquire);
                if let Some(f) = failures.get(seen) {
                    self.seen.store(seen + 1, Ordering::Release);
                    return f.clone();
                }
            }
            notified.await;
        }
    }

    /// The first end of each task counts (a later `poll` of the same task adds nothing).
    fn record(&self, task: &'static str, reason: &str) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut failures = self.failures.lock().unwrap();
        if failures.iter().any(|f| f.task == task) {
            return;
        }
        let failure = TaskFailure { task, reason: reason.to_string() };
        tracing::error!(task, reason, "a background task ended; /readyz reports the agent unready");
        failures.push(failure);
        drop(failures);
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    async fn next(sup: &Supervisor) -> TaskFailure {
        tokio::time::timeout(Duration::from_secs(5), sup.failed()).await.expect("a failure is reported")
    }

    #[tokio::test]
    async fn returns_panics_and_aborts_are_failures_with_their_reason() {
        let sup = Arc::new(Supervisor::default());
        sup.spawn("returns", async {});
        assert_eq!(next(&sup).await, TaskFailure { task: "returns", reason: "stopped".into() });
        sup.spawn("panics", async { panic!("boom") });
        assert_eq!(next(&sup).await.reason, "panicked");
        sup.spawn("forever", std::future::pending());
        assert!(sup.abort("forever") && !sup.abort("nothing"));
        assert_eq!(next(&sup).await.to_string(), "background task forever was cancelled");
        assert_eq!(sup.failures().len(), 3);
    }

    #[tokio::test]
    async fn watched_tasks_are_polled_and_shutdown_is_not_a_failure() {
        let sup = Arc::new(Supervisor::default());
        let outside = tokio::spawn(async {});
        sup.watch("outside", outside.abort_handle());
        outside.await.unwrap();
        assert_eq!(sup.failures(), vec![TaskFailure { task: "outside", reason: "stopped".into() }]);
        sup.stopping();
        sup.spawn("late", async {}).await.unwrap();
        assert_eq!(sup.failures().len(), 1, "ends after shutdown began are expected");
    }
}
