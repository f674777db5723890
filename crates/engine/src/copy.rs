//! Copies of an environment on disk: where the copy is written, and how it
//! takes the destination's name only once it is whole, never replacing
//! anything that is there.
//!
//! The copy is written to a hidden name beside the destination (so on the
//! same file system), flushed to disk, and renamed into place with a rename
//! that refuses an existing name. A failure, a full disk say, removes what
//! was written: the destination then does not exist, as before the call.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::env::Env;
use crate::error::{Error, Result};

/// Tells apart the staging names of copies made at once by one process.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_code(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A failed copy of `source` to `dest`.
fn copy_error(source: &Path, dest: &Path, code: i32, detail: Option<String>) -> Error {
    let mut what = format!("cannot copy {} to {}", source.display(), dest.display());
    if let Some(detail) = detail {
        what.push_str(&format!(" ({detail})"));
    }
    Error::Copy {
        code,
        what,
        path: dest.display().to_string(),
    }
}

/// Refuse `dest` if anything is there (a dangling symbolic link included:
/// a rename would replace it). `source` is named in the error.
pub fn check_free(source: &Path, dest: &Path) -> Result<()> {
    match dest.symlink_metadata() {
        Ok(_) => Err(copy_error(source, dest, libc::EEXIST, None)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(copy_error(source, dest, io_code(&e), None)),
    }
}

/// A copy being written under a hidden name beside its destination: a
/// directory holding `data.mdb`, or a single file. Removed when dropped,
/// unless it was renamed into place.
struct Staged {
    /// The hidden name: the directory, or the file.
    path: PathBuf,
    /// The data file (inside `path` when `dir`).
    data: PathBuf,
    dir: bool,
    file: File,
    published: bool,
}

impl Staged {
    /// Create the staging directory (`subdir`) or file in `parent`, with
    /// the store's `mode` (as LMDB would give its own files).
    fn create(parent: &Path, name: &std::ffi::OsStr, subdir: bool, mode: u32) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let mut tries = 0;
        loop {
            let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut hidden = OsString::from(".");
            hidden.push(name);
            hidden.push(format!(".{}.{n}.copy", std::process::id()));
            let path = parent.join(hidden);
            let made = if subdir {
                let mut dir = std::fs::DirBuilder::new();
                dir.mode(mode | 0o700);
                dir.create(&path)
            } else {
                Ok(())
            };
            match made {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let data = if subdir {
                path.join("data.mdb")
            } else {
                path.clone()
            };
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&data);
            match opened {
                Ok(file) => {
                    return Ok(Staged {
                        path,
                        data,
                        dir: subdir,
                        file,
                        published: false,
                    })
                }
                Err(e) => {
                    if subdir {
                        let _ = std::fs::remove_dir(&path);
                    }
                    if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 {
                        tries += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Make what was written durable: the data file, and the directory
    /// that names it.
    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()?;
        if self.dir {
            File::open(&self.path)?.sync_all()?;
        }
        Ok(())
    }

    /// Give the copy its name, `dest`, which must still not exist.
    fn publish(&mut self, dest: &Path) -> io::Result<()> {
        rename_no_replace(&self.path, dest, self.dir)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        let _ = std::fs::remove_file(&self.data);
        if self.dir {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Rename `from` to `to`, failing with `EEXIST` if `to` exists.
fn rename_no_replace(from: &Path, to: &Path, dir: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (old, new) = (c_path(from)?, c_path(to)?);
        // SAFETY: two NUL-terminated paths that outlive the call; renameat2
        // only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                old.as_ptr(),
                libc::AT_FDCWD,
                new.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // EINVAL: the file system has no such rename; ENOSYS: the kernel.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(err);
        }
    }
    if !dir {
        // A hard link fails on an existing name, atomically.
        match std::fs::hard_link(from, to) {
            Ok(()) => {
                let _ = std::fs::remove_file(from);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            // No hard links here: fall back to the check below.
            Err(_) => {}
        }
    }
    // No atomic way left: a name that appears between the check and the
    // rename may be replaced (an empty directory, or a file).
    if to.symlink_metadata().is_ok() {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    std::fs::rename(from, to)
}

/// fsync the directory `dir`, so that a rename in it survives a crash. Some
/// file systems cannot sync a directory; the copy is whole either way.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Env {
    /// Write a consistent copy of the committed database to `dest`, which
    /// must not exist: a directory holding `data.mdb` for an environment
    /// opened with `subdir`, else a single file. The copy opens with the
    /// same options (its lock file is made by its first open). `compact`
    /// leaves out the free pages, so the copy holds only the live data.
    ///
    /// The copy is written beside `dest` and renamed into place once whole
    /// and synced to disk: on failure nothing is left at `dest`, and the
    /// error (`Error::Copy`, naming `dest`) says why. Writers in this and
    /// other processes go on during the copy; a growth of the map in this
    /// process waits for it. Call without the GIL.
    pub fn copy(&self, dest: &Path, compact: bool) -> Result<()> {
        let source = self.path.as_path();
        check_free(source, dest)?;
        let Some(name) = dest.file_name() else {
            return Err(copy_error(source, dest, libc::EINVAL, None));
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut staged = Staged::create(parent, name, self.options.subdir, self.options.mode)
            .map_err(|e| copy_error(source, dest, io_code(&e), None))?;
        self.copy_into(&staged.file, compact).map_err(|e| match e {
            Error::Lmdb { code, .. } => copy_error(source, dest, code, None),
            e => e,
        })?;
        staged
            .sync()
            .map_err(|e| copy_error(source, dest, io_code(&e), None))?;
        let staging = staged.path.display().to_string();
        staged.publish(dest).map_err(|e| {
            let detail = (e.raw_os_error() != Some(libc::EEXIST))
                .then(|| format!("renaming {staging} into place"));
            copy_error(source, dest, io_code(&e), detail)
        })?;
        sync_dir(parent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Sorted;
    use crate::env::EnvOptions;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("los-copy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn read(env: &Env, key: &[u8]) -> Option<Vec<u8>> {
        let g = env.gate.try_shared().unwrap();
        let txn = env.begin_read(g).unwrap().unwrap();
        txn.get(key).unwrap().map(<[u8]>::to_vec)
    }

    #[test]
    fn a_compacted_copy_leaves_out_the_free_pages() {
        let dir = tmp("compact");
        let env = Env::open(&dir.join("src"), &EnvOptions::default()).unwrap();
        let keys: Vec<Vec<u8>> = (0..500u32)
            .map(|i| format!("k{i:04}").into_bytes())
            .collect();
        let value = vec![1u8; 8000];
        let puts = keys.iter().map(|k| (&k[..], Some(&value[..]))).collect();
        env.commit(&Sorted::last_write_wins(puts), 0, None).unwrap();
        let deletions = keys[1..].iter().map(|k| (&k[..], None)).collect();
        env.commit(&Sorted::last_write_wins(deletions), 0, None)
            .unwrap();
        env.copy(&dir.join("plain"), false).unwrap();
        env.copy(&dir.join("compact"), true).unwrap();
        let size = |name: &str| {
            std::fs::metadata(dir.join(name).join("data.mdb"))
                .unwrap()
                .len()
        };
        assert!(size("compact") * 20 < size("plain"), "{}", size("compact"));
        for name in ["plain", "compact"] {
            let copy = Env::open(&dir.join(name), &EnvOptions::default()).unwrap();
            assert_eq!(read(&copy, b"k0000"), Some(vec![1u8; 8000]));
            assert_eq!(read(&copy, b"k0001"), None);
            copy.close().unwrap();
        }
        env.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_existing_destination_is_refused_and_kept() {
        let dir = tmp("exists");
        let env = Env::open(&dir.join("src"), &EnvOptions::default()).unwrap();
        std::fs::write(dir.join("taken"), b"mine").unwrap();
        let err = env.copy(&dir.join("taken"), true).unwrap_err();
        let Error::Copy { code, path, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            (*code, path.as_str()),
            (libc::EEXIST, &*dir.join("taken").to_string_lossy())
        );
        assert!(err.to_string().contains("it already exists"), "{err}");
        assert_eq!(std::fs::read(dir.join("taken")).unwrap(), b"mine");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["src", "taken"]);
        env.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
