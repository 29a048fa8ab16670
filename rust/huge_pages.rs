//! Asks the kernel to back large tables with huge pages (Linux, x86-64 and aarch64).
//!
//! The limiter registry visits its index and slot table at random; with 4 KiB
//! pages almost every lookup over a million keys also misses the TLB (a page
//! walk that is especially slow in a virtual machine). `madvise(MADV_HUGEPAGE)`
//! is only advice: it changes no contents, and where transparent huge pages
//! are off (or on other platforms) this does nothing.

/// Tables smaller than this gain nothing from a 2 MiB page.
const MIN_BYTES: usize = 4 << 20;

/// Advises huge pages for the memory of `table` (its whole capacity).
pub fn advise<T>(table: &Vec<T>) {
    let bytes = table.capacity() * std::mem::size_of::<T>();
    if bytes >= MIN_BYTES {
        imp::advise(table.as_ptr().cast::<u8>() as usize, bytes);
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[allow(unsafe_code)]
mod imp {
    use libc::{c_void, madvise, MADV_HUGEPAGE};

    const PAGE: usize = 4096;

    pub fn advise(start: usize, bytes: usize) {
        // madvise wants a page-aligned start; the pages it covers lie wholly inside the table.
        let first = start.next_multiple_of(PAGE);
        let end = (start + bytes) / PAGE * PAGE;
        if end > first {
            // SAFETY: [first, end) lies inside one live allocation that we own;
            // MADV_HUGEPAGE only changes how the kernel backs those pages, never
            // their contents or validity. Failure (e.g. THP disabled) is harmless.
            let _ = unsafe { madvise(first as *mut c_void, end - first, MADV_HUGEPAGE) };
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod imp {
    pub fn advise(_start: usize, _bytes: usize) {}
}
