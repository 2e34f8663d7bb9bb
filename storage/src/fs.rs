//! All file access of the storage crate goes through the [`Storage`] trait, so that tests can
//! swap the real file system for [`crate::sim::SimStorage`], which keeps written bytes apart
//! from fsynced ones and injects crashes, failed fsyncs and a full disk.
//!
//! Every method blocks: callers run them off the async runtime's worker threads.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A directory tree of files.
pub trait Storage: Send + Sync + Debug + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing, creating it (empty) when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file. Durable only once the parent directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file atomically, replacing `to`. Durable only once the parent is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals, renames) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> bool;
}

/// An open file. All methods take `&self` so that a flusher thread may `sync_data` while the
/// owner keeps writing, as the real file system allows.
pub trait StorageFile: Send + Sync + Debug {
    /// The file's length in bytes.
    fn byte_len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `position`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `position`. On error some prefix may have been written.
    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;

    /// Asks the kernel to drop the file's cached pages from byte `from` to `to` (bytes
    /// already synced, so clean): a hint that changes no byte of the file. Nothing by default.
    fn drop_cached(&self, _from: u64, _to: u64) -> io::Result<()> {
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `position`.
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], position + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of file",
                ));
            }
            done += n;
        }
        Ok(())
    }

    /// Appends exactly `len` bytes read at `position` to `out`. The real file reads into the
    /// vector's spare capacity, so a large read costs no zeroing pass first.
    fn read_exact_at_into(&self, out: &mut Vec<u8>, len: usize, position: u64) -> io::Result<()> {
        let start = out.len();
        out.resize(start + len, 0);
        let result = self.read_exact_at(&mut out[start..], position);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealStorage;

#[derive(Debug)]
struct RealFile(File);

impl Storage for RealStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

impl StorageFile for RealFile {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        loop {
            match FileExt::read_at(&self.0, buf, position) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn read_exact_at_into(&self, out: &mut Vec<u8>, len: usize, position: u64) -> io::Result<()> {
        out.reserve(len);
        let start = out.len();
        let mut done = 0;
        while done < len {
            let spare = &mut out.spare_capacity_mut()[..len - done];
            // SAFETY: `pread` writes at most `spare.len()` bytes into memory the vector owns
            // and has reserved; the length is raised only over bytes the kernel reported
            // written, so no uninitialised byte ever becomes part of the vector.
            let n = unsafe {
                libc::pread(
                    self.0.as_raw_fd(),
                    spare.as_mut_ptr().cast::<libc::c_void>(),
                    spare.len(),
                    libc::off_t::try_from(position + done as u64)
                        .map_err(|_| io::Error::other("position past off_t"))?,
                )
            };
            match n {
                n if n > 0 => {
                    let n = n as usize;
                    // SAFETY: see above: the first `n` spare bytes were just written.
                    unsafe { out.set_len(out.len() + n) };
                    done += n;
                }
                0 => {
                    out.truncate(start);
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past end of file",
                    ));
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        out.truncate(start);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.0.write_all_at(buf, position)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn drop_cached(&self, from: u64, to: u64) -> io::Result<()> {
        let offset =
            libc::off_t::try_from(from).map_err(|_| io::Error::other("offset past off_t"))?;
        let len = libc::off_t::try_from(to.saturating_sub(from))
            .map_err(|_| io::Error::other("length past off_t"))?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: posix_fadvise reads no memory of ours; it takes a descriptor we own. A
        // length of 0 would mean "to the end of the file", hence the check above.
        let code = unsafe {
            libc::posix_fadvise(self.0.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code))
        }
    }
}
