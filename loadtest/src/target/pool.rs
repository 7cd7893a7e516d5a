//! A bounded connection pool: at most `size` connections in use at once;
//! idle ones are reused, broken ones dropped and replaced on demand.

use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Most connections one pool may hold (per region, per baseline server).
pub const POOL_SIZE_MAX: usize = 256;

/// The pool.
pub struct Pool<C> {
    slots: Semaphore,
    idle: Mutex<Vec<C>>,
}

impl<C> Pool<C> {
    /// A pool of `size` (1..=[`POOL_SIZE_MAX`]) connections.
    pub fn new(size: usize) -> Pool<C> {
        let size = size.clamp(1, POOL_SIZE_MAX);
        Pool {
            slots: Semaphore::new(size),
            idle: Mutex::new(Vec::with_capacity(size)),
        }
    }

    /// Waits for a slot. Holding the permit entitles the caller to one
    /// connection: an idle one from [`Pool::take`], or a new one.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed, so acquire cannot fail.
        self.slots.acquire().await.ok()
    }

    /// An idle connection, if there is one.
    pub fn take(&self) -> Option<C> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Returns a healthy connection for reuse. The idle list never holds
    /// more than the number of slots, because only slot holders put back.
    pub fn put(&self, conn: C) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
    }

    /// Drops every idle connection.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// One connection taken from a pool for one operation. [`Lease::keep`]
/// puts a healthy connection back; dropping the lease without it discards
/// the connection (its state is unknown after an error or a timeout).
pub struct Lease<'a, C> {
    pool: &'a Pool<C>,
    conn: Option<C>,
    _slot: Option<SemaphorePermit<'a>>,
}

impl<'a, C> Lease<'a, C> {
    /// Takes a slot of `pool` and an idle connection, or one made by `connect`.
    pub async fn take<E, F>(pool: &'a Pool<C>, connect: F) -> Result<Lease<'a, C>, E>
    where
        F: AsyncFnOnce() -> Result<C, E>,
    {
        let slot = pool.slot().await;
        let conn = match pool.take() {
            Some(c) => c,
            None => connect().await?,
        };
        Ok(Lease {
            pool,
            conn: Some(conn),
            _slot: slot,
        })
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut C {
        // Present from `take` until `keep` consumes the lease.
        self.conn
            .as_mut()
            .expect("a lease holds its connection until kept")
    }

    /// Returns the connection to the pool for reuse.
    pub fn keep(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.put(c);
        }
    }
}
