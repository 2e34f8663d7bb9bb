//! Keeps large buffers on glibc's heap.
//!
//! The client reads every answer into a fresh zeroed `Vec` and decoding copies the records
//! into another; a 1 MiB fetch answer thus needs two 1 MiB allocations. glibc serves any
//! allocation of 128 KiB or more with `mmap` until a free of such a block raises that
//! threshold ("dynamic threshold"), and whether it is raised depends on which worker
//! thread frees what. When it is not, every answer costs fresh pages: page faults, the
//! kernel zeroing them, then `munmap`, which made consumer throughput flip between about
//! 3.5 and 10 M events/s from one run to the next. A fixed threshold of 16 MiB (above the
//! 8 MiB frame limit) keeps those buffers on the heap, so the bench measures the broker.

/// Sets glibc's mmap threshold to 16 MiB and its trim threshold to 256 MiB. Returns whether
/// both took effect (never elsewhere than Linux with glibc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_large_buffers_on_heap() -> bool {
    use std::ffi::c_int;
    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // SAFETY: mallopt only changes allocator tunables; it is called before any other thread
    // exists, with values inside the ranges glibc documents (the mmap threshold at most
    // 32 MiB on 64-bit targets).
    unsafe { mallopt(M_MMAP_THRESHOLD, 16 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_large_buffers_on_heap() -> bool {
    false
}
