//! Recovery: torn tails are cut, corrupt records are skipped and reported, everything intact is
//! kept; a full disk corrupts nothing.

mod support;

use mycelium_storage::{LogConfig, SegmentLog, StorageError, StoredMessage};
use std::io::Write;
use support::{batch, message};

fn append_in_tens(log: &mut SegmentLog, count: u64) {
    for from in (1..=count).step_by(10) {
        log.append(&batch(from, 10)).unwrap();
    }
}

/// Writes 100 messages in one segment; returns the segment path and each record's (start, len).
fn write_log(dir: &std::path::Path) -> (std::path::PathBuf, Vec<(usize, usize)>) {
    let (mut log, _) = SegmentLog::open(dir, LogConfig::default()).unwrap();
    log.append(&batch(1, 100)).unwrap();
    log.sync().unwrap();
    let path = log.segment_paths()[0].clone();
    let data = std::fs::read(&path).unwrap();
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            // The zeros written ahead of the records.
            assert!(data[pos..].iter().all(|&b| b == 0));
            break;
        }
        records.push((pos, 8 + len));
        pos += 8 + len;
    }
    assert_eq!(records.len(), 100);
    (path, records)
}

#[test]
fn a_torn_tail_is_cut_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = write_log(dir.path());
    let (last_start, last_len) = records[99];
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len((last_start + last_len / 2) as u64).unwrap();
    drop(file);
    let (mut log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(report.records, 99);
    assert_eq!(report.truncated_bytes, (last_len / 2) as u64);
    assert_eq!(
        log.bounds().next,
        100,
        "the torn record is gone; sequence 100 is free again"
    );
    assert_eq!(log.read(1, usize::MAX, usize::MAX).unwrap(), batch(1, 99));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        last_start as u64,
        "the file was cut"
    );
    log.append(&batch(100, 5)).unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((report.records, report.truncated_bytes), (104, 0));
    assert_eq!(log.read(1, usize::MAX, usize::MAX).unwrap(), batch(1, 104));
}

#[test]
fn garbage_appended_at_the_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0xAB; 37])
        .unwrap();
    let (log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((report.records, report.truncated_bytes), (100, 37));
    assert_eq!(log.bounds().next, 101);
}

#[test]
fn a_corrupt_record_in_the_middle_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = write_log(dir.path());
    let mut data = std::fs::read(&path).unwrap();
    let (start, len) = records[41]; // sequence 42
    data[start + len - 3] ^= 0xFF; // a payload byte: the CRC no longer matches
    std::fs::write(&path, &data).unwrap();
    let (log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(report.records, 99);
    assert_eq!(report.corrupt_regions, 1);
    assert_eq!(report.missing_sequences, 1);
    assert_eq!(report.dropped_bytes, len as u64);
    let kept: Vec<u64> = log
        .read(1, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|m| m.sequence)
        .collect();
    let expected: Vec<u64> = (1..=100).filter(|s| *s != 42).collect();
    assert_eq!(kept, expected, "every intact record is kept");
    assert_eq!(log.bounds().next, 101);
}

#[test]
fn a_corrupt_length_field_is_resynchronised_past() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = write_log(dir.path());
    let mut data = std::fs::read(&path).unwrap();
    let (start, _) = records[9]; // sequence 10
    data[start..start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &data).unwrap();
    let (log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        (report.records, report.corrupt_regions, report.missing_sequences),
        (99, 1, 1)
    );
    let kept = log.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(kept.len(), 99);
    assert_eq!(kept[9].sequence, 11);
}

#[test]
fn retention_by_count_bytes_and_age_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2048,
        retention_messages: Some(100),
        ..LogConfig::default()
    };
    let (mut log, _) = SegmentLog::open(dir.path(), config).unwrap();
    append_in_tens(&mut log, 400);
    let segments_before = log.segment_paths().len();
    let removed = log.apply_retention(0).unwrap();
    assert_eq!(removed, 300);
    assert_eq!(log.bounds().first, 301);
    assert!(
        log.segment_paths().len() < segments_before,
        "old segments deleted"
    );
    assert_eq!(log.read(1, 1, usize::MAX).unwrap()[0].sequence, 301);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2048,
        retention_bytes: Some(8192),
        ..LogConfig::default()
    };
    let (mut log, _) = SegmentLog::open(dir.path(), config).unwrap();
    append_in_tens(&mut log, 400);
    log.apply_retention(0).unwrap();
    assert!(log.bounds().bytes <= 8192 + 2048 * 2, "{:?}", log.bounds());
    assert!(log.bounds().first > 1);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2048,
        retention_age: Some(std::time::Duration::from_nanos(100_000)),
        ..LogConfig::default()
    };
    let (mut log, _) = SegmentLog::open(dir.path(), config).unwrap();
    append_in_tens(&mut log, 400); // publish_ns = 1000 * sequence
    log.apply_retention(400_000).unwrap();
    let first = log.bounds().first;
    assert!(
        first > 1 && first <= 301,
        "messages older than 100 us before t=400 us are gone: first {first}"
    );
}

/// A real full disk: a 1 MiB tmpfs. Appends fail with `Full` and leave no partial record; every
/// append that succeeded is there after reopening.
#[test]
fn a_full_disk_gives_a_clear_error_and_corrupts_nothing() {
    if !mycelium_test_support::available(&[mycelium_test_support::Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount)
        .status()
        .expect("mount is available");
    assert!(
        status.success(),
        "mounting a 1 MiB tmpfs failed (tests run as root on the project's machines)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());

    let (mut log, _) = SegmentLog::open(&mount, LogConfig::default()).unwrap();
    let mut next = 1u64;
    let error = loop {
        let big: Vec<StoredMessage> = (next..next + 10)
            .map(|s| StoredMessage {
                payload: bytes::Bytes::from(vec![7u8; 10_000]),
                ..message(s)
            })
            .collect();
        match log.append(&big) {
            Ok(()) => next += 10,
            Err(e) => break e,
        }
        assert!(next < 10_000, "the disk never filled");
    };
    assert!(matches!(error, StorageError::Full(_)), "{error}");
    assert!(error.to_string().starts_with("storage full"), "{error}");
    assert_eq!(log.bounds().next, next, "the failed batch is not counted");
    drop(log);
    let (log, report) = SegmentLog::open(&mount, LogConfig::default()).unwrap();
    assert_eq!(
        (report.truncated_bytes, report.corrupt_regions),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(log.bounds().next, next);
    assert_eq!(
        log.read(1, usize::MAX, usize::MAX).unwrap().len() as u64,
        next - 1
    );
}

/// A new log with `config` in a fresh directory, ten records appended and synced: the log, its
/// first segment's path and that file's metadata.
fn ten_records_synced(
    config: &LogConfig,
) -> (
    tempfile::TempDir,
    SegmentLog,
    std::path::PathBuf,
    std::fs::Metadata,
) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), config.clone()).unwrap();
    log.append(&batch(1, 10)).unwrap();
    log.sync().unwrap();
    let first = log.segment_paths()[0].clone();
    let meta = std::fs::metadata(&first).unwrap();
    (dir, log, first, meta)
}

/// A torn record written over the zeros ahead of the records: only its own bytes are reported,
/// the file keeps working from the last whole record.
#[test]
fn a_torn_record_in_the_zeroed_space_is_cut_and_only_its_bytes_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = write_log(dir.path());
    let (last_start, last_len) = records[99];
    let end = (last_start + last_len) as u64;
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size >= end + (1 << 20),
        "zeros written ahead: {size} bytes for {end} of records"
    );
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xAB; 37], end).unwrap();
    drop(file);
    let (mut log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        (report.records, report.truncated_bytes, report.corrupt_regions),
        (100, 37, 0),
        "{report:?}"
    );
    assert_eq!(log.bounds().next, 101);
    log.append(&batch(101, 5)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((report.records, report.truncated_bytes), (105, 0), "{report:?}");
    assert_eq!(log.read(1, usize::MAX, usize::MAX).unwrap(), batch(1, 105));
}

/// By default the active segment keeps zeros written ahead of its records (an fdatasync after
/// an append then flushes data only): the file is longer than its records, recovery reads the
/// zeros as free space (no loss reported) and appends write over them; a sealed segment gives
/// the rest back.
#[test]
fn the_active_segment_keeps_zeros_ahead_and_a_sealed_one_gives_them_back() {
    use std::os::unix::fs::MetadataExt;
    let config = LogConfig {
        segment_bytes: 64 << 10,
        ..LogConfig::default()
    };
    let (dir, log, first, meta) = ten_records_synced(&config);
    assert!(
        meta.len() >= 1 << 20,
        "zeros ahead: the file is {} bytes",
        meta.len()
    );
    assert!(
        meta.blocks() * 512 >= 1 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    // A restart without sealing (as after a crash): the zeros are free space, not damage.
    drop(log);
    let (mut log, report) = SegmentLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(
        (report.records, report.truncated_bytes, report.corrupt_regions),
        (10, 0, 0),
        "{report:?}"
    );
    assert_eq!(log.bounds().next, 11);
    // Appends continue over the zeros until the segment rolls; the sealed one is cut back.
    let mut from = 11;
    while log.segment_paths().len() < 2 {
        log.append(&batch(from, 10)).unwrap();
        from += 10;
    }
    let meta = std::fs::metadata(&first).unwrap();
    assert!(
        meta.len() < 80 << 10 && meta.blocks() * 512 < 128 << 10,
        "a sealed segment keeps only its records: {} bytes, {} allocated",
        meta.len(),
        meta.blocks() * 512
    );
    log.sync().unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), config).unwrap();
    assert_eq!(
        (report.records, report.truncated_bytes, report.corrupt_regions),
        (from - 1, 0, 0),
        "{report:?}"
    );
    assert_eq!(log.read(1, usize::MAX, usize::MAX).unwrap(), batch(1, from - 1));
}

/// With `zero_fill = false` the active segment reserves disk space ahead of its records without
/// growing the file (`fallocate(KEEP_SIZE)`); a sealed segment gives the rest back.
#[test]
fn the_active_segment_reserves_space_ahead_and_a_sealed_one_gives_it_back() {
    use std::os::unix::fs::MetadataExt;
    let config = LogConfig {
        segment_bytes: 2048,
        zero_fill: false,
        ..LogConfig::default()
    };
    let (dir, mut log, first, meta) = ten_records_synced(&config);
    assert!(meta.len() < 4096, "records only: {} bytes", meta.len());
    assert!(
        meta.blocks() * 512 >= 4 << 20,
        "reserved ahead: {} bytes allocated",
        meta.blocks() * 512
    );
    // Roll over to a second segment: the first is sealed.
    for from in (11..=50).step_by(10) {
        log.append(&batch(from, 10)).unwrap();
    }
    assert!(log.segment_paths().len() >= 2);
    let meta = std::fs::metadata(&first).unwrap();
    assert!(
        meta.blocks() * 512 < 64 << 10,
        "a sealed segment keeps only its records: {} bytes allocated",
        meta.blocks() * 512
    );
    // Reopening sees exactly the records, nothing of the reservation.
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), config).unwrap();
    assert_eq!(
        (report.truncated_bytes, report.corrupt_regions),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(log.read(1, usize::MAX, usize::MAX).unwrap().len(), 50);
}

/// `reserve_bytes = 0` turns the reservation off: the file allocates as it grows.
#[test]
fn no_reservation_when_reserve_bytes_is_zero() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        reserve_bytes: 0,
        ..LogConfig::default()
    };
    let (mut log, _) = SegmentLog::open(dir.path(), config).unwrap();
    log.append(&batch(1, 10)).unwrap();
    log.sync().unwrap();
    let meta = std::fs::metadata(&log.segment_paths()[0]).unwrap();
    assert!(
        meta.blocks() * 512 < 64 << 10,
        "nothing reserved: {} bytes allocated",
        meta.blocks() * 512
    );
}

/// A sync target is taken under the log (as `DiskBackend::sync` does under its lock) and synced
/// after letting go of it: the log can be appended to meanwhile, and the sync still succeeds and
/// loses nothing of either append.
#[test]
fn a_sync_target_syncs_without_holding_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&batch(1, 10)).unwrap();
    let target = log.sync_target().expect("an active segment");
    log.append(&batch(11, 10)).unwrap();
    target.sync().unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((report.records, report.truncated_bytes), (20, 0), "{report:?}");
    assert_eq!(log.read(1, usize::MAX, usize::MAX).unwrap(), batch(1, 20));
    let empty = tempfile::tempdir().unwrap();
    let (log, _) = SegmentLog::open(empty.path(), LogConfig::default()).unwrap();
    assert!(log.sync_target().is_none(), "nothing to sync in an empty log");
}

#[test]
fn a_log_cut_back_to_a_sequence_drops_everything_from_it_durably() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2_000,
        ..LogConfig::default()
    };
    let (mut log, _) = SegmentLog::open(dir.path(), config.clone()).unwrap();
    append_in_tens(&mut log, 100);
    log.sync().unwrap();
    assert!(log.segment_paths().len() > 3, "several segments");
    // Cut inside a segment, dropping the later segments whole.
    log.cut_from(37).unwrap();
    assert_eq!(log.bounds().next, 37);
    let read = log.read(1, 1000, usize::MAX).unwrap();
    assert_eq!(read.last().map(|m| m.sequence), Some(36));
    assert_eq!(read.len(), 36);
    // Appends continue from the cut; a reopen sees exactly the same.
    log.append(&batch(37, 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), config).unwrap();
    assert_eq!(report.truncated_bytes + report.dropped_bytes, 0, "{report:?}");
    let read = log.read(1, 1000, usize::MAX).unwrap();
    assert_eq!(
        read.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        (1..=39).collect::<Vec<_>>()
    );
}
