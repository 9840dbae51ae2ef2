//! Opening a spool: the lock, its name, and what an earlier run left in it, read once (checksums
//! checked, records not decoded) to know what to send again. Also `hotdog spool inspect`, which
//! reads the same without changing anything.

use super::*;

/// The largest segment; smaller when `max_size` is small, so that the spool can shrink.
const SEGMENT_MAX: u64 = 64 << 20;

pub(super) fn open(config: &config::Spool, metrics: Arc<Metrics>) -> Result<Shared, Error> {
    let dir = &config.path;
    fs::create_dir_all(dir).map_err(io_error(dir, "cannot make its directory"))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(io_error(dir, "cannot open its lock file"))?;
    match fs4::FileExt::try_lock(&lock) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => return Err(Error::Locked(dir.clone())),
        Err(fs4::TryLockError::Error(e)) => return Err(io_error(dir, "cannot lock it")(e)),
    }
    let name = name(dir)?;
    let shared = Shared {
        dir: dir.clone(),
        name,
        id_header: config.id_header,
        max_size: config.max_size,
        fsync: config.fsync,
        segment_size: (config.max_size / 8).clamp(64 << 10, SEGMENT_MAX),
        state: Mutex::default(),
        settled: Mutex::default(),
        acked: AtomicU64::new(0),
        room: event_listener::Event::new(),
        waiting: Mutex::default(),
        first_of_run: 0,
        full: AtomicBool::new(false),
        damage: Mutex::new(None),
        metrics,
        _lock: lock,
    };
    let mut state = State::default();
    let mut last_id = None;
    let mut removed = false;
    let mut damaged = 0;
    for (base, path) in segments(dir)? {
        let Some(seg) = read_segment(&shared, base, &path, &mut damaged)? else {
            continue;
        };
        if seg.pending == 0 {
            remove_segment(dir, base);
            removed = true;
            continue;
        }
        last_id = last_id.max(seg.last_id);
        state.records += seg.pending;
        state.bytes += seg.len + seg.acks_len;
        state.segments.insert(base, seg);
    }
    if removed {
        sync_dir(dir);
    }
    let from_clock = u64::try_from(hotdog_stages::core::now_ms())
        .unwrap_or(0)
        .saturating_mul(1 << 20);
    state.next_id = last_id.map_or(0, |l| l + 1).max(from_clock);
    if let Some(&base) = state.segments.keys().next() {
        state.cursor = Cursor::Disk {
            base,
            offset: format::HEADER_LEN as u64,
        };
        log::info!(
            "spool at {}: {} records of an earlier run to send first ({} segments, {} bytes)",
            dir.display(),
            state.records,
            state.segments.len(),
            state.bytes
        );
    }
    let m = &shared.metrics;
    m.lines.fetch_add(state.records, Relaxed);
    m.spool_records
        .store(i64::try_from(state.records).unwrap_or(i64::MAX), Relaxed);
    m.spool_bytes
        .store(i64::try_from(state.bytes).unwrap_or(i64::MAX), Relaxed);
    let damage = (damaged > 0).then(|| {
        format!(
            "the spool at {} had {damaged} damaged places at start (see the log); the records \
             around them were kept",
            dir.display()
        )
    });
    Ok(Shared {
        first_of_run: state.next_id,
        state: Mutex::new(state),
        damage: Mutex::new(damage),
        ..shared
    })
}

/// The spool's name: made at random when the spool is, kept in `spool.id`.
fn name(dir: &Path) -> Result<String, Error> {
    let path = dir.join("spool.id");
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&path, "cannot read its name")(e)),
    }
    let name = format!("{:016x}", fastrand::u64(..));
    fs::write(&path, format!("{name}\n"))
        .and_then(|()| File::open(&path)?.sync_all())
        .map_err(io_error(&path, "cannot write its name"))?;
    sync_dir(dir);
    Ok(name)
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir, "cannot list it"))? {
        let entry = entry.map_err(io_error(dir, "cannot list it"))?;
        let path = entry.path();
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(base) = base {
            found.push((base, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads one segment and its acknowledgements. `None` when it was moved aside (unreadable, or
/// not a segment). A segment of a later format stops the start.
fn read_segment(
    shared: &Shared,
    base: u64,
    path: &Path,
    damaged: &mut usize,
) -> Result<Option<Segment>, Error> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            *damaged += 1;
            move_aside(shared, base, &format!("it cannot be read: {e}"));
            return Ok(None);
        }
    };
    match format::check_header(&bytes) {
        Ok(()) => {}
        Err(BadHeader::Newer(version)) => {
            return Err(Error::Newer {
                path: path.to_path_buf(),
                version,
            })
        }
        Err(BadHeader::NotASegment) => {
            *damaged += 1;
            move_aside(shared, base, "its header is not a spool segment's");
            return Ok(None);
        }
    }
    let mut seg = Segment::new(base);
    seg.sealed = true;
    seg.len = bytes.len() as u64;
    let mut good = Vec::new();
    for found in format::index(&bytes) {
        match found {
            Found::Record(_, m) if m.id >= base => {
                if good.is_empty() {
                    seg.first_ms = m.read_ms;
                }
                good.push(m.id);
            }
            Found::Record(offset, m) => {
                *damaged += 1;
                seg.damaged.push(offset as u64);
                shared.damaged(
                    base,
                    offset,
                    m.len,
                    "a record with an id before its segment's",
                );
            }
            Found::Corrupt { offset, len } => {
                *damaged += 1;
                seg.damaged.push(offset as u64);
                shared.damaged(base, offset, len, "a damaged record");
            }
            Found::Torn { offset, len } => {
                *damaged += 1;
                seg.damaged.push(offset as u64);
                shared.damaged(base, offset, len, "a torn last write");
            }
        }
    }
    seg.last_id = good.iter().copied().max();
    let acks = acks_path(&shared.dir, base);
    if let Ok(a) = fs::read(&acks) {
        seg.acks_len = a.len() as u64;
        let bad = seg.apply_acks(&a);
        if bad > 0 {
            log::warn!(
                "spool: {bad} damaged acknowledgements in {}: their records are sent again",
                acks.display()
            );
        }
    }
    seg.pending = good.iter().filter(|&&id| !seg.is_done(id)).count() as u64;
    Ok(Some(seg))
}

/// Moves a segment that cannot be used (and its acknowledgements) to `damaged/`: kept for
/// whoever wants to look, out of the way of the spool.
fn move_aside(shared: &Shared, base: u64, why: &str) {
    shared.metrics.spool_corrupt.fetch_add(1, Relaxed);
    let aside = shared.dir.join("damaged");
    let moved = fs::create_dir_all(&aside).and_then(|()| {
        for path in [
            segment_path(&shared.dir, base),
            acks_path(&shared.dir, base),
        ] {
            if let Some(name) = path.file_name() {
                match fs::rename(&path, aside.join(name)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    });
    let path = segment_path(&shared.dir, base);
    match moved {
        Ok(()) => log::error!(
            "spool: {} is not usable ({why}); moved to {}",
            path.display(),
            aside.display()
        ),
        Err(e) => log::error!(
            "spool: {} is not usable ({why}), and cannot be moved aside: {e}; it is ignored",
            path.display()
        ),
    }
    sync_dir(&shared.dir);
}

/// Deletes a segment and its acknowledgements (the caller syncs the directory).
pub(super) fn remove_segment(dir: &Path, base: u64) {
    for path in [segment_path(dir, base), acks_path(dir, base)] {
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("spool: cannot delete {}: {e}", path.display());
            }
        }
    }
}

/// Makes the directory's entries (segments made or deleted) durable.
pub(super) fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("spool: cannot sync the directory {}: {e}", dir.display());
    }
}

/// `hotdog spool inspect DIR`: each segment with its records, what is settled, the oldest
/// record and the damage, read without the lock and without changing anything.
pub fn inspect(dir: &Path) -> Result<String, Error> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut total = (0u64, 0u64, 0u64);
    for (base, path) in segments(dir)? {
        let bytes = fs::read(&path).map_err(io_error(&path, "cannot read a segment"))?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if let Err(e) = format::check_header(&bytes) {
            let _ = writeln!(out, "{name}: {} bytes, not readable: {e:?}", bytes.len());
            continue;
        }
        let (mut records, mut damaged, mut oldest) = (Vec::new(), Vec::new(), None);
        for found in format::index(&bytes) {
            match found {
                Found::Record(_, m) => {
                    oldest = oldest.or(Some(m.read_ms));
                    records.push(m.id);
                }
                Found::Corrupt { offset, len } => damaged.push(format!("damaged {offset}+{len}")),
                Found::Torn { offset, len } => damaged.push(format!("torn {offset}+{len}")),
            }
        }
        let mut seg = Segment::new(base);
        seg.last_id = records.iter().copied().max();
        seg.apply_acks(&fs::read(acks_path(dir, base)).unwrap_or_default());
        let settled = records.iter().filter(|&&id| seg.is_done(id)).count() as u64;
        let n = records.len() as u64;
        total = (
            total.0 + n,
            total.1 + n - settled,
            total.2 + bytes.len() as u64,
        );
        let oldest = oldest.map_or_else(
            || "-".into(),
            |ms| {
                jiff::Timestamp::from_millisecond(ms)
                    .map_or_else(|_| ms.to_string(), |t| t.to_string())
            },
        );
        let _ = writeln!(
            out,
            "{name}: {} bytes, {n} records, {settled} settled, {} to send, oldest read {oldest}{}",
            bytes.len(),
            n - settled,
            if damaged.is_empty() {
                String::new()
            } else {
                format!(", {}", damaged.join(", "))
            }
        );
    }
    let _ = writeln!(
        out,
        "total: {} records, {} to send, {} bytes of segments",
        total.0, total.1, total.2
    );
    Ok(out)
}

/// `hotdog --check` with a spool: its directory exists or can be made, hotdog can write there,
/// and the disk has room for `max_size`; then what is in it. `Err` when the spool cannot be
/// used; warnings come with `Ok`.
pub fn check(config: &config::Spool) -> Result<Vec<String>, String> {
    let dir = &config.path;
    let made = !dir.exists();
    fs::create_dir_all(dir)
        .map_err(|e| format!("the spool directory {} cannot be made: {e}", dir.display()))?;
    let probe = dir.join(".hotdog-check");
    let writable = fs::write(&probe, b"").and_then(|()| fs::remove_file(&probe));
    if made {
        let _ = fs::remove_dir(dir);
    }
    writable.map_err(|e| {
        format!(
            "hotdog cannot write in the spool directory {}: {e}",
            dir.display()
        )
    })?;
    let mut notes = Vec::new();
    if made {
        notes.push(format!(
            "the spool directory {} will be made at start",
            dir.display()
        ));
        return Ok(notes);
    }
    let held = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0);
    match fs4::available_space(dir) {
        Ok(free) if free + held < config.max_size => notes.push(format!(
            "warning: the disk of {} has {} bytes free, less than global.spool.max_size ({}): \
             the spool will be full sooner",
            dir.display(),
            free + held,
            config.max_size
        )),
        Ok(_) => {}
        Err(e) => notes.push(format!(
            "warning: cannot tell the free space of {}: {e}",
            dir.display()
        )),
    }
    match inspect(dir) {
        Ok(report) => {
            if let Some(total) = report.lines().last() {
                notes.push(format!("spool {}: {total}", dir.display()));
            }
        }
        Err(e) => notes.push(format!("warning: {e}")),
    }
    Ok(notes)
}
