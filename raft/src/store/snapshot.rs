//! Snapshot files: a group's snapshots on disk, beside sled rather than in
//! it, so writing one never stalls the log's flushes.
//!
//! A snapshot is one file, `{dir}/{index:020}-{seq:020}.snap`:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `RSVSNAP1` |
//! | 4 | format version (2), little-endian |
//! | 4 | length of the metadata, little-endian |
//! | … | the [`SnapshotMeta`], bincode |
//! | … | the [`AppliedState`], bincode, streamed |
//! | 4 | CRC-32 of every byte before it, little-endian |
//!
//! The version changes whenever the encoding of the state does: version 3
//! is the state with owners, nonce ids and per-SKU adjustment ids. A
//! file of another version is refused, never misread.
//!
//! It is written to a `.tmp` file (synced every [`SNAPSHOT_SYNC_BYTES`], so
//! the disk never has a whole snapshot's dirty pages to write at once),
//! synced, renamed into place, and the directory synced: a crash leaves
//! either the whole file or none. Only the newest snapshot is kept; an
//! older one is deleted once a newer one is in place (a reader that still
//! has it open, such as a transfer to a follower, keeps reading it).
//!
//! A snapshot received from a leader arrives chunk by chunk in `{dir}/incoming/`
//! (see [`crate::network`]), is checked and decoded, and is then renamed
//! into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use super::state_machine::AppliedState;
use crate::config::{SNAPSHOT_BYTES_MAX, SnapshotMeta};

/// First bytes of every snapshot file.
const MAGIC: &[u8; 8] = b"RSVSNAP1";
/// The file format written and read. Bumped whenever the encoding of the
/// state changes (2: owners, nonce ids; 3: per-SKU adjustment ids).
const FORMAT_VERSION: u32 = 3;
/// Largest encoded metadata (a log id, a membership of a few nodes, an id).
const META_BYTES_MAX: u32 = 64 * 1024;
/// While a snapshot is written, its file is synced after every this many
/// bytes, so its dirty pages go to disk in steps instead of one burst that
/// would queue ahead of the log's own flushes.
pub const SNAPSHOT_SYNC_BYTES: u64 = 16 * 1024 * 1024;
/// Buffer of the snapshot writer and readers.
const IO_BUFFER_BYTES: usize = 1024 * 1024;
/// Suffix of a complete snapshot file.
const SNAPSHOT_SUFFIX: &str = ".snap";
/// Suffix of a file being written.
const TMP_SUFFIX: &str = ".tmp";
/// Subdirectory that receives snapshots from leaders.
const INCOMING_DIR: &str = "incoming";

/// A snapshot on disk, open for reading: openraft's snapshot data.
///
/// Cloning shares the open handle. The handle keeps the file readable even
/// after a newer snapshot replaces (and deletes) it, so a transfer in
/// progress is never cut short by one.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: Arc<File>,
    bytes: u64,
}

impl SnapshotFile {
    /// Opens the file at `path` for reading.
    pub fn open(path: &Path) -> io::Result<SnapshotFile> {
        let file = File::open(path)?;
        let bytes = file.metadata()?.len();
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            bytes,
        })
    }

    /// Where the file was when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end. Blocking.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    /// A reader from the start of the file.
    fn reader(&self) -> impl Read + '_ {
        PositionalReader {
            file: &self.file,
            offset: 0,
        }
    }
}

/// Reads a shared file from its own position, leaving the file's cursor
/// alone (other clones of the handle may be reading too).
struct PositionalReader<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for PositionalReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The snapshots of one group: the directory, the newest snapshot and the
/// numbers that keep new file names unique.
#[derive(Clone)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    /// The newest snapshot, if any.
    current: Arc<Mutex<Option<(SnapshotMeta, SnapshotFile)>>>,
    /// The last sequence number used in a file name.
    seq: Arc<AtomicU64>,
    /// Largest snapshot file this node writes (at most
    /// [`SNAPSHOT_BYTES_MAX`]); a build that would exceed it fails.
    bytes_max: u64,
}

impl SnapshotDir {
    /// Opens (creating it if missing) the directory, removes what a crash
    /// left half written, and finds the newest snapshot. Snapshots written
    /// through it are refused past `bytes_max` bytes (capped at
    /// [`SNAPSHOT_BYTES_MAX`]). Blocking.
    pub(crate) fn open(dir: &Path, bytes_max: u64) -> Result<SnapshotDir, StoreError> {
        fs::create_dir_all(dir.join(INCOMING_DIR))?;
        // The directories may have just been created: their names must be
        // on the disk before a snapshot in them lets the log be purged (a
        // synced file in a directory whose entry is lost is lost with it).
        // `dir` is `{storage}/raft-snapshots/{group}`: sync it and its two
        // parents.
        sync_dir(dir)?;
        for parent in dir.ancestors().skip(1).take(2) {
            if !parent.as_os_str().is_empty() {
                sync_dir(parent)?;
            }
        }
        let mut newest: Option<(u64, u64, PathBuf)> = None;
        let mut seq_max = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(entry.path())?;
            } else if let Some((index, seq)) = parse_name(&name) {
                seq_max = seq_max.max(seq);
                if newest.as_ref().is_none_or(|(i, s, _)| (index, seq) > (*i, *s)) {
                    newest = Some((index, seq, entry.path()));
                }
            }
        }
        for entry in fs::read_dir(dir.join(INCOMING_DIR))? {
            fs::remove_file(entry?.path())?;
        }
        let current = match newest {
            Some((_, _, path)) => {
                let file = SnapshotFile::open(&path)?;
                let meta = read_meta(&file)?;
                Some((meta, file))
            }
            None => None,
        };
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            seq: Arc::new(AtomicU64::new(seq_max)),
            bytes_max: bytes_max.min(SNAPSHOT_BYTES_MAX),
        })
    }

    /// The next sequence number for a file name or a snapshot id.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The newest snapshot.
    pub(crate) fn current(&self) -> Option<(SnapshotMeta, SnapshotFile)> {
        self.lock().clone()
    }

    /// An empty snapshot file, already unlinked (nothing is left behind):
    /// a handle for openraft's calls that need one without content.
    pub(crate) fn empty_file(&self) -> io::Result<SnapshotFile> {
        let path = self
            .incoming_dir()
            .join(format!("empty-{}.part", self.next_seq()));
        File::create(&path)?;
        let file = SnapshotFile::open(&path);
        let removed = fs::remove_file(&path);
        let file = file?;
        removed?;
        Ok(file)
    }

    /// Where snapshots received from a leader are written.
    pub(crate) fn incoming_dir(&self) -> PathBuf {
        self.dir.join(INCOMING_DIR)
    }

    /// Writes `state` as a new snapshot file and makes it the newest, unless
    /// a snapshot covering more of the log was stored meanwhile (then the
    /// file is deleted and only its open handle returned). Blocking, and
    /// long for a large state: run it off the async executor.
    pub(crate) fn write<SM: Serialize>(
        &self,
        seq: u64,
        meta: &SnapshotMeta,
        state: &AppliedState<SM>,
    ) -> Result<SnapshotFile, StoreError> {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let final_path = self.dir.join(file_name(index, seq));
        let tmp_path = final_path.with_extension(&TMP_SUFFIX[1..]);
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp_path)?;
        let mut out = SyncingWriter::new(file, self.bytes_max);
        let written = (|| -> Result<(), StoreError> {
            {
                let mut buffered = BufWriter::with_capacity(IO_BUFFER_BYTES, &mut out);
                write_header(&mut buffered, meta)?;
                // No size limit in the codec: with one, bincode walks the
                // whole state once to size it before writing it. The writer
                // enforces the limit instead.
                bincode::DefaultOptions::new().serialize_into(&mut buffered, state)?;
                buffered.flush()?;
            }
            out.finish()?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        self.publish(&tmp_path, &final_path, meta, false)
    }

    /// Installs a snapshot received from a leader (already checked and
    /// decoded by the caller): moves it into place (a copy if it is not in
    /// this group's incoming directory) and makes it the newest, whatever
    /// was stored before. Blocking.
    pub(crate) fn install(&self, meta: &SnapshotMeta, received: &SnapshotFile) -> Result<(), StoreError> {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let final_path = self.dir.join(file_name(index, self.next_seq()));
        if received.path().parent() == Some(self.incoming_dir().as_path()) {
            self.publish(received.path(), &final_path, meta, true)?;
        } else {
            // A byte-for-byte copy: the file already ends with its checksum.
            let tmp_path = final_path.with_extension(&TMP_SUFFIX[1..]);
            let mut out = File::create(&tmp_path)?;
            io::copy(&mut received.reader(), &mut out)?;
            out.sync_all()?;
            self.publish(&tmp_path, &final_path, meta, true)?;
        }
        Ok(())
    }

    /// Renames a complete file into place and makes it the newest snapshot
    /// (unless `replace_newer` is false and the current one covers more of
    /// the log: then the file is deleted again), then deletes the snapshot
    /// files older than the newest. The rename and the choice happen under
    /// the lock, so a build and an install that finish together cannot
    /// delete each other's file; deleting happens after it.
    fn publish(
        &self,
        from: &Path,
        to: &Path,
        meta: &SnapshotMeta,
        replace_newer: bool,
    ) -> Result<SnapshotFile, StoreError> {
        let (file, obsolete) = {
            let mut current = self.lock();
            fs::rename(from, to)?;
            sync_dir(&self.dir)?;
            let file = SnapshotFile::open(to)?;
            let index = |m: &SnapshotMeta| m.last_log_id.map(|id| id.index);
            let newer_kept = !replace_newer && current.as_ref().is_some_and(|(m, _)| index(m) > index(meta));
            if !newer_kept {
                *current = Some((meta.clone(), file.clone()));
            }
            let kept = current
                .as_ref()
                .and_then(|(_, f)| f.path().file_name().and_then(|n| n.to_str()).and_then(parse_name));
            let mut obsolete = Vec::new();
            for entry in fs::read_dir(&self.dir)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).and_then(parse_name);
                if let (Some(name), Some(kept)) = (name, kept)
                    && name < kept
                {
                    obsolete.push(path);
                }
            }
            (file, obsolete)
        };
        for path in obsolete {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(file)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(SnapshotMeta, SnapshotFile)>> {
        // Every critical section is one read or one assignment.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks a snapshot file's checksum, then decodes it: its metadata and the
/// state it holds. Blocking; the whole state is decoded into memory.
pub(crate) fn read<SM: DeserializeOwned>(
    file: &SnapshotFile,
) -> Result<(SnapshotMeta, AppliedState<SM>), StoreError> {
    verify_checksum(file)?;
    let mut reader = CountingReader::new(BufReader::with_capacity(IO_BUFFER_BYTES, file.reader()));
    let meta = read_header(&mut reader, &file.path)?;
    let state: AppliedState<SM> = codec().deserialize_from(&mut reader)?;
    if reader.count + 4 != file.bytes {
        return Err(StoreError::Corrupt(format!(
            "{}: the state ends at byte {}, the checksum at {}",
            file.path.display(),
            reader.count,
            file.bytes
        )));
    }
    Ok((meta, state))
}

/// Checks a snapshot file's checksum and header, without decoding the
/// state: what a follower does to a snapshot it received before it hands it
/// to openraft (which would stop the group on a decoding error). Blocking.
pub(crate) fn verify(file: &SnapshotFile) -> Result<SnapshotMeta, StoreError> {
    verify_checksum(file)?;
    read_meta(file)
}

/// The metadata of a snapshot file, without reading the state.
fn read_meta(file: &SnapshotFile) -> Result<SnapshotMeta, StoreError> {
    let mut reader = BufReader::with_capacity(64 * 1024, file.reader());
    read_header(&mut reader, &file.path)
}

fn write_header(out: &mut impl Write, meta: &SnapshotMeta) -> Result<(), StoreError> {
    let meta_bytes = codec().serialize(meta)?;
    let meta_len = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|&n| n <= META_BYTES_MAX)
        .ok_or_else(|| StoreError::Corrupt(format!("snapshot metadata of {} bytes", meta_bytes.len())))?;
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&meta_len.to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    Ok(())
}

fn read_header(reader: &mut impl Read, path: &Path) -> Result<SnapshotMeta, StoreError> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StoreError::Corrupt(format!(
            "{} is not a snapshot file",
            path.display()
        )));
    }
    let mut word = [0u8; 4];
    reader.read_exact(&mut word)?;
    let version = u32::from_le_bytes(word);
    if version != FORMAT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{}: snapshot format {version}, this build reads {FORMAT_VERSION}; it was written by \
             another build: start this node on a fresh data directory",
            path.display()
        )));
    }
    reader.read_exact(&mut word)?;
    let meta_len = u32::from_le_bytes(word);
    if meta_len > META_BYTES_MAX {
        return Err(StoreError::Corrupt(format!(
            "{}: metadata of {meta_len} bytes",
            path.display()
        )));
    }
    let mut meta_bytes = vec![0u8; meta_len as usize];
    reader.read_exact(&mut meta_bytes)?;
    Ok(codec().deserialize(&meta_bytes)?)
}

/// Reads the whole file once and compares its CRC-32 with the trailer.
fn verify_checksum(file: &SnapshotFile) -> Result<(), StoreError> {
    if file.bytes < (MAGIC.len() + 12) as u64 {
        return Err(StoreError::Corrupt(format!(
            "{}: {} bytes is too short for a snapshot",
            file.path.display(),
            file.bytes
        )));
    }
    if file.bytes > SNAPSHOT_BYTES_MAX {
        return Err(StoreError::Corrupt(format!(
            "{}: {} bytes is over the snapshot limit of {SNAPSHOT_BYTES_MAX}",
            file.path.display(),
            file.bytes
        )));
    }
    let body = file.bytes - 4;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; IO_BUFFER_BYTES];
    let mut offset = 0;
    while offset < body {
        let want = (body - offset).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            return Err(StoreError::Corrupt(format!("{}: truncated", file.path.display())));
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let mut trailer = [0u8; 4];
    file.file.read_exact_at(&mut trailer, body)?;
    let (want, got) = (u32::from_le_bytes(trailer), hasher.finalize());
    if want != got {
        return Err(StoreError::Corrupt(format!(
            "{}: checksum {got:08x}, the file says {want:08x}",
            file.path.display()
        )));
    }
    Ok(())
}

/// The codec of snapshot files: bincode, varint integers, with the
/// snapshot size limit.
fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(SNAPSHOT_BYTES_MAX)
}

fn file_name(index: u64, seq: u64) -> String {
    format!("{index:020}-{seq:020}{SNAPSHOT_SUFFIX}")
}

/// `(index, seq)` of a snapshot file name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index, seq) = stem.split_once('-')?;
    Some((index.parse().ok()?, seq.parse().ok()?))
}

/// Makes a rename or a removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file writer that keeps a CRC-32 of what it wrote, syncs the file every
/// [`SNAPSHOT_SYNC_BYTES`], refuses to grow the file past its limit, and on
/// [`finish`](SyncingWriter::finish) appends the checksum and syncs.
struct SyncingWriter {
    file: File,
    hasher: crc32fast::Hasher,
    written: u64,
    unsynced: u64,
    /// Largest file, checksum included.
    bytes_max: u64,
}

impl SyncingWriter {
    fn new(file: File, bytes_max: u64) -> SyncingWriter {
        SyncingWriter {
            file,
            hasher: crc32fast::Hasher::new(),
            written: 0,
            unsynced: 0,
            bytes_max,
        }
    }

    fn finish(mut self) -> io::Result<()> {
        let crc = self.hasher.clone().finalize();
        self.file.write_all(&crc.to_le_bytes())?;
        self.file.sync_all()
    }
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Leaves room for the checksum: a file over the limit is refused
        // when read.
        if self.written + buf.len() as u64 + 4 > self.bytes_max {
            return Err(io::Error::other(format!(
                "snapshot over its limit of {} bytes",
                self.bytes_max
            )));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R> CountingReader<R> {
    fn new(inner: R) -> CountingReader<R> {
        CountingReader { inner, count: 0 }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File names sort by index, then sequence number, and parse back.
    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_name(&file_name(42, 7)), Some((42, 7)));
        assert!(file_name(9, 100) < file_name(10, 1));
        assert_eq!(parse_name("00000000000000000042-x.snap"), None);
        assert_eq!(parse_name("00000000000000000042-00000000000000000007.tmp"), None);
    }

    /// A header of this build reads back; one of another format version
    /// (such as 1, before reservation owners) is refused with an error that
    /// names both versions, rather than misread.
    #[test]
    fn other_format_versions_are_refused() {
        let meta = SnapshotMeta::default();
        let mut bytes = Vec::new();
        write_header(&mut bytes, &meta).expect("header");
        let path = Path::new("00000000000000000001-00000000000000000001.snap");
        assert_eq!(read_header(&mut bytes.as_slice(), path).expect("reads"), meta);
        for version in [1u32, FORMAT_VERSION + 1] {
            bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&version.to_le_bytes());
            match read_header(&mut bytes.as_slice(), path) {
                Err(StoreError::Corrupt(why)) => assert!(
                    why.contains(&format!(
                        "snapshot format {version}, this build reads {FORMAT_VERSION}"
                    )),
                    "{why}"
                ),
                other => panic!("format {version} read as {other:?}"),
            }
        }
        assert_eq!(FORMAT_VERSION, 3);
    }
}
