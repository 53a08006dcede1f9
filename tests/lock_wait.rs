//! Rule 8 and 10 in the library: a wait for the home's lock is said (once, after a
//! second), bounded by `lock_timeout`, and `release_forced` needs no lock at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use disk_reserve::{Error, HostFs, Released, Reserve, ReserveConfig, SimFs};

const HOME: &str = "/srv/app";

#[test]
fn lock_timeout_gives_up_having_changed_nothing_and_forced_release_needs_no_lock() {
    let fs = SimFs::with_home(1 << 30, HOME);
    let reserve = Reserve::new(fs.clone(), HOME, ReserveConfig::with_size_bytes(1 << 20))
        .unwrap()
        .lock_timeout(Some(Duration::from_millis(50)));
    reserve.ensure().unwrap();
    let dir = fs.open_dir(HOME.into()).unwrap();
    let held = dir.try_lock().unwrap().expect("nobody holds it yet");

    let started = Instant::now();
    match reserve.release() {
        Err(Error::LockTimeout { path, waited }) => {
            assert_eq!(path, HOME);
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
        }
        other => panic!("rule 10: a bounded wait gives up: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        fs.lookup("/srv/app/.reserve").unwrap().is_some(),
        "nothing changed"
    );

    assert_eq!(
        reserve.release_forced().unwrap(),
        Released::Released {
            releasable_bytes: 1 << 20,
            freed_bytes: 1 << 20
        },
        "rule 8: an operator can force it"
    );
    assert_eq!(fs.lookup("/srv/app/.reserve").unwrap(), None);
    drop(held);
}

#[test]
fn a_wait_of_a_second_is_reported_once() {
    let fs = SimFs::with_home(1 << 30, HOME);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let started = Instant::now();
    let said_after = Arc::new(std::sync::Mutex::new(None));
    let said = Arc::clone(&said_after);
    let reserve = Reserve::new(fs.clone(), HOME, ReserveConfig::with_size_bytes(1 << 20))
        .unwrap()
        .lock_timeout(Some(Duration::from_millis(1300)))
        .on_lock_wait(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            *said.lock().unwrap() = Some(started.elapsed());
        });
    let dir = fs.open_dir(HOME.into()).unwrap();
    let held = dir.try_lock().unwrap().expect("nobody holds it yet");
    assert!(matches!(reserve.ensure(), Err(Error::LockTimeout { .. })));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "rule 8: said once, after a second"
    );
    let after = said_after.lock().unwrap().expect("said");
    assert!(
        after >= Duration::from_secs(1),
        "rule 8: not said before a second of waiting: {after:?}"
    );
    drop(held);
    reserve.ensure().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no wait, nothing said");
}
