//! The agent's process plumbing: the tokio runtime, the signals that end
//! a run, the wait for either, and (feature `ebpf-log`) the thread that
//! copies the XDP program's log records into ours.

use std::time::Duration;

use anyhow::{Context, Result};
use log::{info, warn};

use crate::forward::Forwarder;

/// A runtime with `threads` workers (the forwarder's UDP sockets each get
/// one to themselves when the kernel spreads load evenly).
pub(crate) fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// SIGTERM and SIGINT, caught from the moment this is created: create it
/// before touching the kernel, so a signal that comes early still takes
/// the clean way out (detach, unpin).
pub(crate) struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Must run inside the runtime (`rt.enter()`).
    pub(crate) fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    pub(crate) async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Serves until SIGINT/SIGTERM; an error if the forwarder fails first.
pub(crate) async fn serve_until_signal(
    shutdown: &mut Shutdown,
    forwarder: Option<&mut Forwarder>,
) -> Result<()> {
    let run = async {
        match forwarder {
            Some(f) => f.run().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        sig = shutdown.wait() => {
            info!("{sig}: shutting down");
            Ok(())
        }
        r = run => r.context("the forwarder stopped"),
    }
}

/// Copies the XDP program's aya-log records into the agent's log, from a
/// thread of its own that sleeps in poll(2) until the ring has data.
#[cfg(feature = "ebpf-log")]
pub(crate) fn forward_ebpf_logs(mut logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    std::thread::spawn(move || loop {
        {
            let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, PollTimeout::from(1000u16)) {
                log::warn!("eBPF log ring: {e}");
                return;
            }
        }
        logger.flush();
    });
}

/// A listener's accept errors (out of file descriptors, out of memory, a
/// connection reset before it was taken) are logged and waited out, the
/// wait doubling from 10 ms to 1 s: never the end of the agent, which
/// would take the node's DNS with it.
pub(crate) struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
}

impl AcceptBackoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: Self::MIN,
        }
    }

    /// The next connection `accept` (a listener's accept) brings, through
    /// any number of errors.
    pub(crate) async fn next<T, F>(&mut self, mut accept: impl FnMut() -> F) -> T
    where
        F: std::future::Future<Output = std::io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(c) => {
                    // The next error is news again.
                    self.delay = Self::MIN;
                    return c;
                }
                Err(e) => self.failed(&e).await,
            }
        }
    }

    async fn failed(&mut self, e: &std::io::Error) {
        if self.delay == Self::MIN {
            warn!("accepting on {}: {e}; retrying", self.what);
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }
}

/// Raises the soft limit on open files to the hard one: every client
/// connection, upstream query socket and watcher takes a descriptor. One
/// line when that is refused, with the limit that stays.
pub(crate) fn raise_nofile(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => return warn!("could not read the open-file limit: {e}"),
    };
    let mut now = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => now = hard,
            Err(e) => warn!(
                "could not raise the open-file limit from {soft} to {hard} ({e}): {soft} it is"
            ),
        }
    }
    if now < need {
        warn!(
            "the open-file limit is {now}, below the {need} the config's bounds may use \
             (TCP connections, upstream queries in flight, maps): raise it (ulimit -n) or \
             lower forward.tcp-max-connections and forward.max-inflight"
        );
    }
}
