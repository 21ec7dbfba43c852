//! The disk tier's files: one file per object, written whole to a temporary name and renamed,
//! checksummed, and read back only when every check passes. A file that is truncated,
//! corrupted or from another format is deleted, never served.
//!
//! Layout (little-endian): magic `EDGWCACH`, format version (u32), head length (u32), body
//! length (u64), CRC-32 of the head, CRC-32 of the body; then the head (object id, primary
//! key hash, URL, surrogate keys, serialized cache meta) and the body. Files live in
//! `<folder>/<first two hex digits of the id>/<id in hex>`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use pingora::cache::key::HashBinary;

use super::key::ObjectUrl;

const MAGIC: &[u8; 8] = b"EDGWCACH";
/// Also covers the header compression dictionary (`HEADER_DICTIONARY`): stored heads need it.
const FORMAT_VERSION: u32 = 1;
const PREAMBLE: usize = 8 + 4 + 4 + 8 + 4 + 4;
/// Files being written; left-overs of a crash are deleted at start-up.
const TEMPORARY_SUFFIX: &str = ".tmp";
/// Holds the folder for one edgeward process.
const LOCK_FILE: &str = "lock";

/// An object as stored on disk.
pub(super) struct DiskObject {
    pub id: HashBinary,
    pub primary: HashBinary,
    pub url: ObjectUrl,
    pub tags: Vec<String>,
    pub meta_internal: Vec<u8>,
    pub meta_header: Vec<u8>,
    pub body: Bytes,
}

/// What start-up learns about a stored object without reading its body.
pub(super) struct FoundObject {
    pub id: HashBinary,
    pub primary: HashBinary,
    pub url: ObjectUrl,
    pub tags: Vec<String>,
    pub file_size: u64,
    pub modified: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot use `{}` for the disk cache", path.display())]
    Folder { path: PathBuf, source: io::Error },
    #[error("the disk cache folder `{}` is in use by another edgeward process", path.display())]
    Locked { path: PathBuf },
}

/// Why a stored file was rejected.
#[derive(Debug, thiserror::Error)]
pub(super) enum FileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("damaged: {0}")]
    Damaged(&'static str),
}

/// The folder of the disk tier, held (locked) for as long as this value lives.
pub(super) struct Folder {
    path: PathBuf,
    _lock: File,
}

impl Folder {
    /// Opens (creating) the folder and takes its lock, waiting up to `patience` for another
    /// process to let go of it.
    pub(super) fn open(path: &Path, patience: std::time::Duration) -> Result<Folder, DiskError> {
        let folder_error = |source| DiskError::Folder {
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(path).map_err(folder_error)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(folder_error)?;
        let started = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < patience => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(DiskError::Locked {
                        path: path.to_path_buf(),
                    })
                }
                Err(fs::TryLockError::Error(e)) => return Err(folder_error(e)),
            }
        }
        Ok(Folder {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn object_path(&self, id: &HashBinary) -> PathBuf {
        let name = hex::encode(id);
        self.path.join(&name[..2]).join(name)
    }

    /// Every stored object's head, oldest first. Files that are left-overs or fail their
    /// checks are deleted.
    pub(super) fn scan(&self) -> Vec<FoundObject> {
        let mut found = Vec::new();
        let Ok(shards) = fs::read_dir(&self.path) else {
            return found;
        };
        for shard in shards.flatten() {
            if !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                match read_head(&path) {
                    Ok(object) => found.push(object),
                    Err(e) => {
                        log::warn!("cache: dropping `{}`: {e}", path.display());
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        found.sort_by_key(|o| o.modified);
        found
    }

    /// Writes an object whole; returns the file's size.
    pub(super) fn write(&self, object: &DiskObject) -> io::Result<u64> {
        let head = encode_head(object)?;
        let mut preamble = Vec::with_capacity(PREAMBLE);
        preamble.extend_from_slice(MAGIC);
        preamble.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        preamble.extend_from_slice(&u32_len(head.len())?.to_le_bytes());
        preamble.extend_from_slice(&(object.body.len() as u64).to_le_bytes());
        preamble.extend_from_slice(&crc32fast::hash(&head).to_le_bytes());
        preamble.extend_from_slice(&crc32fast::hash(&object.body).to_le_bytes());
        let path = self.object_path(&object.id);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension(TEMPORARY_SUFFIX.trim_start_matches('.'));
        let mut file = File::create(&temporary)?;
        let written = file
            .write_all(&preamble)
            .and_then(|()| file.write_all(&head))
            .and_then(|()| file.write_all(&object.body))
            .and_then(|()| fs::rename(&temporary, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temporary);
            return Err(e);
        }
        Ok((preamble.len() + head.len() + object.body.len()) as u64)
    }

    /// Reads an object back, checking everything; `id` must be the one stored.
    pub(super) fn read(&self, id: &HashBinary) -> Result<DiskObject, FileError> {
        let mut bytes = Vec::new();
        File::open(self.object_path(id))?.read_to_end(&mut bytes)?;
        let preamble = Preamble::parse(&bytes)?;
        let total = PREAMBLE as u64 + u64::from(preamble.head_len) + preamble.body_len;
        if bytes.len() as u64 != total {
            return Err(FileError::Damaged("truncated or extended"));
        }
        let head_end = PREAMBLE + preamble.head_len as usize;
        let head = &bytes[PREAMBLE..head_end];
        if crc32fast::hash(head) != preamble.head_crc {
            return Err(FileError::Damaged("head checksum mismatch"));
        }
        if crc32fast::hash(&bytes[head_end..]) != preamble.body_crc {
            return Err(FileError::Damaged("body checksum mismatch"));
        }
        let mut object = decode_head(head)?;
        if &object.id != id {
            return Err(FileError::Damaged("holds another object"));
        }
        object.body = Bytes::from(bytes).slice(head_end..);
        Ok(object)
    }

    pub(super) fn remove(&self, id: &HashBinary) {
        let path = self.object_path(id);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cache: cannot delete `{}`: {e}", path.display());
            }
        }
    }
}

struct Preamble {
    head_len: u32,
    body_len: u64,
    head_crc: u32,
    body_crc: u32,
}

impl Preamble {
    fn parse(bytes: &[u8]) -> Result<Preamble, FileError> {
        let mut reader = Reader(bytes);
        if reader.take(8)? != MAGIC {
            return Err(FileError::Damaged("not an edgeward cache file"));
        }
        if reader.u32()? != FORMAT_VERSION {
            return Err(FileError::Damaged("written by another format version"));
        }
        Ok(Preamble {
            head_len: reader.u32()?,
            body_len: reader.u64()?,
            head_crc: reader.u32()?,
            body_crc: reader.u32()?,
        })
    }
}

/// Reads just the preamble and head of a file (start-up does not read bodies).
fn read_head(path: &Path) -> Result<FoundObject, FileError> {
    if path
        .extension()
        .is_some_and(|e| e == TEMPORARY_SUFFIX.trim_start_matches('.'))
    {
        return Err(FileError::Damaged("an unfinished write"));
    }
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    let mut preamble = [0u8; PREAMBLE];
    file.read_exact(&mut preamble)
        .map_err(|_| FileError::Damaged("truncated"))?;
    let preamble = Preamble::parse(&preamble)?;
    let total = PREAMBLE as u64 + u64::from(preamble.head_len) + preamble.body_len;
    if metadata.len() != total {
        return Err(FileError::Damaged("truncated or extended"));
    }
    let mut head = vec![0u8; preamble.head_len as usize];
    file.read_exact(&mut head)?;
    if crc32fast::hash(&head) != preamble.head_crc {
        return Err(FileError::Damaged("head checksum mismatch"));
    }
    let object = decode_head(&head)?;
    let named = path.file_name().and_then(|n| n.to_str()) == Some(&hex::encode(object.id));
    if !named {
        return Err(FileError::Damaged("file name does not match its object"));
    }
    Ok(FoundObject {
        id: object.id,
        primary: object.primary,
        url: object.url,
        tags: object.tags,
        file_size: metadata.len(),
        modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

fn u32_len(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::other("a stored field is over 4 GiB"))
}

fn encode_head(object: &DiskObject) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(
        64 + object.meta_internal.len()
            + object.meta_header.len()
            + object.url.path_and_query.len(),
    );
    head.extend_from_slice(&object.id);
    head.extend_from_slice(&object.primary);
    for field in [
        object.url.host.as_bytes(),
        object.url.path_and_query.as_bytes(),
    ] {
        head.extend_from_slice(&u32_len(field.len())?.to_le_bytes());
        head.extend_from_slice(field);
    }
    head.extend_from_slice(&u32_len(object.tags.len())?.to_le_bytes());
    for tag in &object.tags {
        head.extend_from_slice(&u32_len(tag.len())?.to_le_bytes());
        head.extend_from_slice(tag.as_bytes());
    }
    for field in [&object.meta_internal, &object.meta_header] {
        head.extend_from_slice(&u32_len(field.len())?.to_le_bytes());
        head.extend_from_slice(field);
    }
    Ok(head)
}

fn decode_head(head: &[u8]) -> Result<DiskObject, FileError> {
    let mut reader = Reader(head);
    let id = reader.hash()?;
    let primary = reader.hash()?;
    let host = reader.string()?;
    let path_and_query = reader.string()?;
    let tag_count = reader.u32()?;
    let mut tags = Vec::new();
    for _ in 0..tag_count {
        tags.push(reader.string()?);
    }
    let meta_internal = reader.field()?.to_vec();
    let meta_header = reader.field()?.to_vec();
    if !reader.0.is_empty() {
        return Err(FileError::Damaged("unexpected bytes after the head"));
    }
    Ok(DiskObject {
        id,
        primary,
        url: ObjectUrl {
            host,
            path_and_query,
        },
        tags,
        meta_internal,
        meta_header,
        body: Bytes::new(),
    })
}

/// Reads a byte buffer front to back; running out is damage, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FileError> {
        if self.0.len() < n {
            return Err(FileError::Damaged("truncated"));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, FileError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, FileError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }

    fn hash(&mut self) -> Result<HashBinary, FileError> {
        let mut hash = HashBinary::default();
        let len = hash.len();
        hash.copy_from_slice(self.take(len)?);
        Ok(hash)
    }

    fn field(&mut self) -> Result<&'a [u8], FileError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, FileError> {
        String::from_utf8(self.field()?.to_vec()).map_err(|_| FileError::Damaged("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: u8, body: &'static [u8]) -> DiskObject {
        DiskObject {
            id: [id; 16],
            primary: [id + 1; 16],
            url: ObjectUrl {
                host: "example.com".into(),
                path_and_query: "/a?b=1".into(),
            },
            tags: vec!["t1".into(), "t2".into()],
            meta_internal: vec![1, 2, 3],
            meta_header: vec![4, 5],
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn objects_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path(), std::time::Duration::ZERO).unwrap();
        let written = object(7, b"hello body");
        let size = folder.write(&written).unwrap();
        let read = folder.read(&[7; 16]).unwrap();
        assert_eq!(read.body, written.body);
        assert_eq!(read.url, written.url);
        assert_eq!(read.tags, written.tags);
        assert_eq!(
            (read.meta_internal, read.meta_header),
            (vec![1, 2, 3], vec![4, 5])
        );
        let found = folder.scan();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].id, found[0].file_size), ([7; 16], size));
    }

    #[test]
    fn damaged_files_are_refused_and_dropped_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path(), std::time::Duration::ZERO).unwrap();
        for id in 1..=4 {
            folder.write(&object(id, b"0123456789")).unwrap();
        }
        let path = |id: u8| folder.object_path(&[id; 16]);
        // Truncated, a flipped body byte, a flipped head byte, an unfinished write.
        let bytes = fs::read(path(1)).unwrap();
        fs::write(path(1), &bytes[..bytes.len() - 3]).unwrap();
        let mut bytes = fs::read(path(2)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path(2), &bytes).unwrap();
        let mut bytes = fs::read(path(3)).unwrap();
        bytes[PREAMBLE + 40] ^= 1;
        fs::write(path(3), &bytes).unwrap();
        fs::write(path(4).with_extension("tmp"), b"half").unwrap();

        assert!(matches!(folder.read(&[1; 16]), Err(FileError::Damaged(_))));
        assert!(matches!(
            folder.read(&[2; 16]),
            Err(FileError::Damaged("body checksum mismatch"))
        ));
        assert!(matches!(
            folder.read(&[3; 16]),
            Err(FileError::Damaged("head checksum mismatch"))
        ));
        let found: Vec<HashBinary> = folder.scan().iter().map(|o| o.id).collect();
        // The body is only checked when read: start-up keeps object 2 until then.
        assert_eq!(found.len(), 2, "objects 2 and 4 remain");
        assert!(found.contains(&[4; 16]) && found.contains(&[2; 16]));
        assert!(!path(1).exists() && !path(3).exists());
        assert!(!path(4).with_extension("tmp").exists());
    }

    #[test]
    fn a_second_process_cannot_share_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Folder::open(dir.path(), std::time::Duration::ZERO).unwrap();
        assert!(matches!(
            Folder::open(dir.path(), std::time::Duration::ZERO),
            Err(DiskError::Locked { .. })
        ));
    }
}
