//! Tests only the fjall state store needs: reopening, the fsync policy, and refusing the
//! layout that kept partition logs in fjall.

use std::path::Path;
use std::time::Duration;

use fjall::{Database, KeyspaceCreateOptions, PersistMode};

use crate::{FjallStore, FsyncPolicy, StateStore, StorageError};

fn open(path: &Path) -> FjallStore {
    FjallStore::open(path, FsyncPolicy::Always).unwrap()
}

#[test]
fn fsync_policy_parses_the_documented_forms() {
    assert_eq!("always".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Always);
    assert_eq!(" Always ".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Always);
    assert_eq!("interval:250".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Interval(Duration::from_millis(250)));
    for bad in ["", "never", "interval", "interval:", "interval:x", "interval:0", "interval:-5"] {
        let error = bad.parse::<FsyncPolicy>().unwrap_err();
        assert!(matches!(error, StorageError::InvalidFsyncPolicy(_)), "{bad:?}");
        assert!(error.to_string().contains("\"always\" or \"interval:<ms>\""), "{error}");
    }
}

#[test]
fn reopen_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.put("sessions", b"client-1", b"state").unwrap();
        store.put("retained", b"t/1", b"payload").unwrap();
        store.put("retained", b"t/2", b"gone").unwrap();
        store.delete("retained", b"t/2").unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.get("sessions", b"client-1").unwrap(), Some(b"state".to_vec()));
    assert_eq!(store.scan_prefix("retained", b"").unwrap(), vec![(b"t/1".to_vec(), b"payload".to_vec())]);
}

#[test]
fn interval_policy_flushes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FjallStore::open(dir.path(), FsyncPolicy::Interval(Duration::from_millis(5))).unwrap();
        assert_eq!(store.fsync_policy(), FsyncPolicy::Interval(Duration::from_millis(5)));
        store.put("space", b"k", b"v").unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.get("space", b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn a_store_with_logs_in_fjall_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let batches = db.keyspace("log.batches", KeyspaceCreateOptions::default).unwrap();
        batches.insert(b"k", b"v").unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let error = FjallStore::open(dir.path(), FsyncPolicy::Always).unwrap_err();
    assert!(error.to_string().contains("pre-segment layout"), "{error}");
}
