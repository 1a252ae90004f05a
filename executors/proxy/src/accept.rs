//! What an accept loop does when `accept` fails: most failures are passing (the process
//! is out of descriptors, the kernel out of memory, a client gave up before it was
//! accepted), and a loop that ends on the first one ends a sandbox's network until the
//! daemon restarts. So a loop logs the first failure of a run, waits a moment that grows
//! while failures go on (bounded), and tries again; only a listener that can no longer
//! accept at all ends it.

use std::io;
use std::time::Duration;

/// The first wait after a failure that is not the client's.
const FIRST: Duration = Duration::from_millis(5);
/// The longest wait: a descriptor freed is used within this.
const LONGEST: Duration = Duration::from_millis(500);

/// One accept loop's state between failures.
#[derive(Debug)]
pub struct Backoff {
    /// Names the listener in the log.
    what: String,
    /// Failures since the last connection accepted.
    failures: u64,
    wait: Duration,
}

/// What a loop should do after an accept failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Accept again at once: the failure was one client's.
    Retry,
    /// Wait, then accept again: the process or machine is short of something.
    Wait,
    /// Stop: the listener is closed or is no listener.
    Stop,
}

/// What to do after `error` from `accept`.
#[must_use]
pub fn after(error: &io::Error) -> After {
    use rustix::io::Errno;
    let Some(code) = error.raw_os_error().map(Errno::from_raw_os_error) else {
        return After::Wait;
    };
    match code {
        Errno::BADF | Errno::INVAL | Errno::NOTSOCK => After::Stop,
        // Errors of the connection being accepted, which Linux passes on (accept(2)).
        Errno::CONNABORTED
        | Errno::INTR
        | Errno::AGAIN
        | Errno::PROTO
        | Errno::PERM
        | Errno::NETDOWN
        | Errno::NOPROTOOPT
        | Errno::HOSTDOWN
        | Errno::NONET
        | Errno::HOSTUNREACH
        | Errno::OPNOTSUPP
        | Errno::NETUNREACH => After::Retry,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unforeseen: wait and try again.
        _ => After::Wait,
    }
}

impl Backoff {
    /// A loop that names its listener `what` in the log.
    pub fn new(what: impl Into<String>) -> Backoff {
        Backoff {
            what: what.into(),
            failures: 0,
            wait: FIRST,
        }
    }

    /// A connection was accepted: the run of failures, if any, is over.
    pub fn accepted(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                "{} accepts connections again after {} failed attempts",
                self.what,
                self.failures
            );
            self.failures = 0;
            self.wait = FIRST;
        }
    }

    /// Deals with `error` from `accept`: logs the first of a run, waits as long as the
    /// run calls for. Returns whether the loop should go on.
    pub async fn failed(&mut self, error: &io::Error) -> bool {
        let after = after(error);
        if after == After::Stop {
            tracing::warn!("{} stopped accepting: {error}", self.what);
            return false;
        }
        if self.failures == 0 {
            tracing::warn!(
                "{} cannot accept a connection ({error}); it tries again, waiting up to {} ms",
                self.what,
                LONGEST.as_millis()
            );
        }
        self.failures += 1;
        if after == After::Wait {
            tokio::time::sleep(self.wait).await;
            self.wait = (self.wait * 2).min(LONGEST);
        }
        true
    }

    /// How long the next wait is.
    #[must_use]
    pub fn next_wait(&self) -> Duration {
        self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: rustix::io::Errno) -> io::Error {
        io::Error::from_raw_os_error(code.raw_os_error())
    }

    #[test]
    fn only_a_dead_listener_ends_the_loop() {
        use rustix::io::Errno;
        assert_eq!(after(&os(Errno::MFILE)), After::Wait);
        assert_eq!(after(&os(Errno::NFILE)), After::Wait);
        assert_eq!(after(&os(Errno::NOBUFS)), After::Wait);
        assert_eq!(after(&os(Errno::NOMEM)), After::Wait);
        assert_eq!(after(&os(Errno::CONNABORTED)), After::Retry);
        assert_eq!(after(&os(Errno::BADF)), After::Stop);
        assert_eq!(after(&os(Errno::INVAL)), After::Stop);
        assert_eq!(after(&io::Error::other("no code")), After::Wait);
    }

    #[tokio::test]
    async fn waits_grow_to_a_bound_and_reset_on_success() {
        let mut backoff = Backoff::new("test");
        let emfile = os(rustix::io::Errno::MFILE);
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(backoff.next_wait());
            assert!(backoff.failed(&emfile).await);
        }
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert_eq!(*waits.last().unwrap(), LONGEST);
        backoff.accepted();
        assert_eq!(backoff.next_wait(), FIRST);
        assert!(!backoff.failed(&os(rustix::io::Errno::BADF)).await);
    }
}
