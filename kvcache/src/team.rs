//! Splitting one CPU computation across the threads libtorch already owns, so that a method's
//! own kernels (packed-code attention, for example) use both cores the way libtorch's operators
//! do, without a second thread pool competing with libtorch's for them.
//!
//! [`run`] calls `work(part, parts)` once for each part, on libtorch's OpenMP team when this
//! process has it loaded (GNU OpenMP: its threads spin between parallel regions, so handing them
//! work costs about a microsecond), else on rayon's global pool. `parts` may be fewer than asked
//! for (inside another parallel region a team has one thread), so the work must split itself by
//! `parts`, and a caller that needs the same bits at any thread count must make each output
//! element's arithmetic independent of the split.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

/// Which threads run the parts of a [`run_on`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// libtorch's OpenMP team when loaded, else rayon ([`run`]).
    Auto,
    /// rayon's global pool (the fallback, chosen explicitly: tests run it beside libtorch).
    Rayon,
}

/// Calls `work(part, parts)` for `part` in `0..parts`, `parts <= threads.max(1)`, in parallel,
/// and returns when every part has returned.
pub fn run(threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
    run_on(Pool::Auto, threads, work)
}

/// [`run`] on the given threads.
pub fn run_on(pool: Pool, threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
    let threads = threads.max(1);
    if threads == 1 {
        return work(0, 1);
    }
    match (pool, OpenMpTeam::loaded()) {
        (Pool::Auto, Some(team)) => team.run(threads, work),
        _ => rayon::scope(|s| {
            for part in 1..threads {
                s.spawn(move |_| work(part, threads));
            }
            work(0, threads);
        }),
    }
}

/// libtorch's own CPU thread team (GNU OpenMP), when this process has it loaded.
struct OpenMpTeam {
    parallel: unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
    thread_num: unsafe extern "C" fn() -> c_int,
    num_threads: unsafe extern "C" fn() -> c_int,
}

impl OpenMpTeam {
    /// The team, looked up once among the libraries already loaded (libgomp's stable entry
    /// points, `GOMP_parallel` since GCC 4.9).
    fn loaded() -> Option<&'static OpenMpTeam> {
        static TEAM: OnceLock<Option<OpenMpTeam>> = OnceLock::new();
        TEAM.get_or_init(|| {
            #[cfg(unix)]
            {
                let this = libloading::os::unix::Library::this();
                // SAFETY: the symbols have these C signatures in every libgomp since GCC 4.9;
                // the library stays loaded for the life of the process (libtorch needs it).
                unsafe {
                    let parallel = *this.get(b"GOMP_parallel\0").ok()?;
                    let thread_num = *this.get(b"omp_get_thread_num\0").ok()?;
                    let num_threads = *this.get(b"omp_get_num_threads\0").ok()?;
                    std::mem::forget(this);
                    Some(OpenMpTeam { parallel, thread_num, num_threads })
                }
            }
            #[cfg(not(unix))]
            None
        })
        .as_ref()
    }

    /// Calls `work(t, T)` on each of the `T` threads of a parallel region of (at most)
    /// `threads` threads, and returns when all have.
    fn run(&'static self, threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
        struct Region<'a> {
            team: &'static OpenMpTeam,
            work: &'a (dyn Fn(usize, usize) + Sync),
        }
        extern "C" fn body(data: *mut c_void) {
            // SAFETY: `data` is the `Region` below, alive until GOMP_parallel returns.
            let region = unsafe { &*(data as *const Region<'_>) };
            // SAFETY: called inside the parallel region.
            let (t, nt) = unsafe { ((region.team.thread_num)(), (region.team.num_threads)()) };
            (region.work)(t.max(0) as usize, nt.max(1) as usize);
        }
        let region = Region { team: self, work };
        // SAFETY: `body` only reads `region`, which outlives the call.
        unsafe { (self.parallel)(body, &region as *const Region<'_> as *mut c_void, threads as c_uint, 0) };
    }
}

/// A raw pointer that the parts of one computation share, each writing its own elements.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(*mut T);
// SAFETY: users hand each part disjoint elements (documented on `new`).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Shares `data` among parts that write disjoint elements of it and read none that another
    /// part writes.
    pub fn new(data: &mut [T]) -> Self {
        SharedMut(data.as_mut_ptr())
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// In bounds of the slice given to `new`, which must outlive the use; no other part may
    /// access these elements meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: as documented.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// The raw pointer.
    pub fn get(self) -> *mut T {
        self.0
    }
}
