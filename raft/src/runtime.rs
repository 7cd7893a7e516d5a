//! The async runtime openraft runs on ([`Runtime`]): tokio, with a
//! random-number generator this crate owns, so a simulation can seed it.
//!
//! openraft's only randomness is the election timeout it draws from
//! [`openraft::AsyncRuntime::thread_rng`]. Here that is a per-thread
//! SplitMix64 stream, seeded from the operating system on first use, or from
//! [`simulate`]'s seed on a thread that runs a whole-cluster simulation (one
//! current-thread tokio runtime on simulated time: every task of every
//! simulated node polls on that one thread, so one stream per thread is one
//! stream per simulation).
//!
//! [`simulated`] tells code with a choice to make that it runs inside a
//! simulation: work that would go to another thread (`spawn_blocking`, the
//! snapshot writer) is done inline instead ([`blocking`]), because a thread
//! finishes at a moment no seed controls.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

thread_local! {
    /// The SplitMix64 state of this thread's stream (`None` until first use).
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
    /// True on a thread running a simulation.
    static SIMULATED: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as running a simulation seeded by `seed` (every draw of
/// [`random_u64`], and so every election timeout, follows from it), or as a
/// normal thread again (`None`).
pub fn simulate(seed: Option<u64>) {
    SIMULATED.with(|s| s.set(seed.is_some()));
    STATE.with(|s| s.set(seed.map(|seed| seed ^ 0x005E_ED0F_5EED)));
}

/// True on a thread running a simulation (see [`simulate`]).
pub fn simulated() -> bool {
    SIMULATED.with(Cell::get)
}

/// The next 64 bits of this thread's stream. Not for secrets: the stream
/// is predictable from its output.
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get().unwrap_or_else(entropy);
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(Some(x));
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A seed from the operating system (the hasher's per-process keys and the
/// time), for a thread that was not given one.
fn entropy() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    RandomState::new().hash_one(nanos)
}

/// Runs `f` off the async executor (tokio's blocking pool), or inline in a
/// simulation, where another thread's timing would break the replay.
pub async fn blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if simulated() {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

/// A handle to this thread's stream, as openraft asks for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRng;

impl rand08::RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        (random_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        random_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = random_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// tokio, as openraft's `TokioRuntime`, with [`ThreadRng`] for its draws.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Runtime;

impl AsyncRuntime for Runtime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_stream() {
        let draw = |seed| {
            std::thread::spawn(move || {
                simulate(Some(seed));
                (0..4).map(|_| random_u64()).collect::<Vec<_>>()
            })
            .join()
            .unwrap()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(!simulated(), "only the simulating thread is marked");
    }
}
