//! rbd-ffi against a real Ceph cluster: the one `scripts/ceph-cluster.sh start` brings up
//! (or the conf named by `RBD_TEST_CONF`). Without a cluster the tests fail under CI
//! (`CI=true`) or with `REQUIRE_TOOLS=1`, and are skipped, loudly, elsewhere.

use mem_ffi::Buf;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbd_ffi::{Cluster, Compared, Image, Pool, SharedObject, WatchEvent};

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// The test cluster's ceph.conf, or `None` (after saying so) when there is none.
fn cluster_conf() -> Option<PathBuf> {
    let conf = std::env::var_os("RBD_TEST_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ceph-cluster/ceph.conf")
        });
    if conf.exists() {
        return Some(conf);
    }
    let msg = format!(
        "no Ceph cluster at {} (run scripts/ceph-cluster.sh start)",
        conf.display()
    );
    let required =
        |name: &str, on: &[&str]| std::env::var(name).is_ok_and(|v| on.contains(&v.as_str()));
    if required("CI", &["true", "1"]) || required("REQUIRE_TOOLS", &["1"]) {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A fresh image of `size` bytes named after the test, in pool `rbd`.
fn fresh_image(name: &str, size: u64) -> Option<(Arc<Pool>, Image)> {
    let conf = cluster_conf()?;
    let cluster = Cluster::connect(
        &conf,
        "admin",
        &[
            ("rbd_cache", "false"),
            ("rbd_skip_partial_discard", "false"),
        ],
    )
    .expect("connect");
    let pool = cluster.pool("rbd").expect("pool rbd");
    let name = format!("ffi-{name}-{}", std::process::id());
    pool.create_image(&name, size).expect("create image");
    let image = pool.open_image(&name).expect("open image");
    Some((pool, image))
}

/// Waits for an asynchronous operation's report.
fn wait<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(WAIT).expect("librbd completion")
}

fn pattern(len: usize, seed: u8) -> Buf {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    Buf::copy_from_slice(&bytes)
}

#[test]
fn aio_write_read_flush_round_trip() {
    let Some((_pool, image)) = fresh_image("rw", 16 * MIB as u64) else {
        return;
    };
    assert_eq!(image.size().unwrap(), 16 * MIB as u64);
    let data = pattern(3 * MIB, 7);
    let (tx, rx) = mpsc::channel();
    // Crosses object boundaries (4 MiB objects): librbd splits it.
    let tx2 = tx.clone();
    image.aio_write(3 * MIB as u64, data.clone(), move |r, buf| {
        tx2.send((r, buf)).unwrap()
    });
    let (result, returned) = wait(&rx);
    result.unwrap();
    assert_eq!(returned, data, "the write's buffer comes back untouched");
    let (ftx, frx) = mpsc::channel();
    image.aio_flush(move |r| ftx.send(r).unwrap());
    wait(&frx).unwrap();
    image.aio_read(
        3 * MIB as u64,
        mem_ffi::pool::global().alloc(3 * MIB),
        move |r, buf| tx.send((r, buf)).unwrap(),
    );
    let (result, read) = wait(&rx);
    result.unwrap();
    assert!(read == data, "read back what was written");
    // The blocking calls see the same bytes.
    let mut sync = vec![0u8; 4096];
    image.read(3 * MIB as u64, &mut sync).unwrap();
    assert_eq!(sync, data[..4096]);
}

#[test]
fn many_operations_in_flight_complete_once_each() {
    let Some((_pool, image)) = fresh_image("many", 8 * MIB as u64) else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    for i in 0..64u64 {
        let tx = tx.clone();
        image.aio_write(i * 65536, pattern(65536, i as u8), move |r, _| {
            tx.send((i, r)).unwrap()
        });
    }
    let mut seen = [false; 64];
    for _ in 0..64 {
        let (i, r) = wait(&rx);
        r.unwrap();
        assert!(!seen[i as usize], "completion {i} reported twice");
        seen[i as usize] = true;
    }
    let mut buf = vec![0u8; 65536];
    image.read(63 * 65536, &mut buf).unwrap();
    assert!(pattern(65536, 63) == buf);
    // Dropping the image with nothing in flight closes it at once.
    drop(image);
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    let Some((_pool, image)) = fresh_image("zero", 8 * MIB as u64) else {
        return;
    };
    image.write(0, &pattern(2 * MIB, 1)).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    // Partial-object ranges, not aligned to anything but 512 bytes.
    image.aio_discard(512, 70_000 - 512 + 512, move |r| tx2.send(r).unwrap());
    wait(&rx).unwrap();
    image.aio_write_zeroes(MIB as u64 + 512, 4096, move |r| tx.send(r).unwrap());
    wait(&rx).unwrap();
    let mut buf = vec![0xAAu8; 2 * MIB];
    image.read(0, &mut buf).unwrap();
    let expected = {
        let mut e = pattern(2 * MIB, 1);
        e[512..70_512].fill(0);
        e[MIB + 512..MIB + 512 + 4096].fill(0);
        e
    };
    assert!(
        expected == buf,
        "discarded and zeroed ranges read as zeroes, the rest kept"
    );
    // The blocking versions too.
    image.discard(0, 4096).unwrap();
    image.write_zeroes(8192, 512).unwrap();
    image.flush().unwrap();
    let mut head = vec![0xAAu8; 8704];
    image.read(0, &mut head).unwrap();
    assert!(head[..4096].iter().all(|&b| b == 0));
    assert_eq!(head[4096..8192], expected[4096..8192]);
    assert!(head[8192..].iter().all(|&b| b == 0));
}

#[test]
fn compare_and_write_writes_on_match_and_reports_mismatch_offset() {
    let Some((_pool, image)) = fresh_image("caw", 8 * MIB as u64) else {
        return;
    };
    let offset = 3 * 4096u64 + 512;
    let old = pattern(512, 3);
    let new = pattern(512, 9);
    image.write(offset, &old).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    image.aio_compare_and_write(offset, old.clone(), new.clone(), move |r, c, w| {
        tx2.send((r, c, w)).unwrap()
    });
    let (result, compare, write) = wait(&rx);
    assert_eq!(result.unwrap(), Compared::Written);
    assert_eq!((compare, write), (old.clone(), new.clone()));
    let mut medium = vec![0u8; 512];
    image.read(offset, &mut medium).unwrap();
    assert!(new == medium);

    // The medium is `new` now: a compare buffer differing from byte 100 on fails there.
    let mut stale = new.clone();
    stale[100] ^= 0xFF;
    stale[200] ^= 0xFF;
    let tx2 = tx.clone();
    image.aio_compare_and_write(offset, stale, old.clone(), move |r, c, w| {
        tx2.send((r, c, w)).unwrap()
    });
    let (result, _, _) = wait(&rx);
    assert_eq!(result.unwrap(), Compared::Mismatch { offset: 100 });
    image.read(offset, &mut medium).unwrap();
    assert!(new == medium, "nothing written on a mismatch");

    // Ceph 16 only compares within one 512-byte sector; a longer range is refused.
    image.aio_compare_and_write(
        offset,
        Buf::copy_from_slice(&[0; 1024]),
        Buf::copy_from_slice(&[0; 1024]),
        move |r, c, w| tx.send((r, c, w)).unwrap(),
    );
    let (result, _, _) = wait(&rx);
    assert_eq!(result.unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn missing_image_and_pool_are_enoent_and_existing_image_is_eexist() {
    let Some(conf) = cluster_conf() else {
        return;
    };
    let cluster = Cluster::connect(&conf, "admin", &[]).unwrap();
    let e = cluster.pool("no-such-pool").err().expect("missing pool");
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    let pool = cluster.pool("rbd").unwrap();
    let e = pool
        .open_image("no-such-image")
        .err()
        .expect("missing image");
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    let name = format!("ffi-exists-{}", std::process::id());
    pool.create_image(&name, MIB as u64).unwrap();
    let e = pool.create_image(&name, MIB as u64).unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST, "{e}");
}

#[test]
fn unreachable_cluster_fails_within_the_mount_timeout() {
    // No cluster needed: a conf naming a monitor address nothing listens on.
    let dir = std::env::temp_dir().join(format!("rbd-ffi-unreachable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("ceph.conf");
    std::fs::write(
        &conf,
        "[global]\nmon host = 127.0.0.1:1\nauth client required = none\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = Cluster::connect(&conf, "admin", &[("client_mount_timeout", "3")])
        .err()
        .expect("no monitor answers");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    assert_eq!(e.op(), "rados_connect", "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    // A missing conf file is reported as such.
    let e = Cluster::connect(&dir.join("missing.conf"), "admin", &[])
        .err()
        .expect("missing conf");
    assert_eq!(e.op(), "rados_conf_read_file", "{e}");
}

#[test]
fn resize_is_seen_by_the_size_watch() {
    let Some((_pool, image)) = fresh_image("resize", 8 * MIB as u64) else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    image
        .watch_size(move |size| tx.send(size).unwrap())
        .expect("watch");
    assert_eq!(
        image.watch_size(|_| {}).unwrap_err().errno(),
        libc::EBUSY,
        "one watch per image"
    );
    image.resize(24 * MIB as u64).expect("grow");
    assert_eq!(wait(&rx), 24 * MIB as u64);
    image.resize(4 * MIB as u64).expect("shrink");
    assert_eq!(wait(&rx), 4 * MIB as u64);
    assert_eq!(image.size().unwrap(), 4 * MIB as u64);
    // Dropping the image removes the watch and ends its thread.
    drop(image);
}

#[test]
fn image_knows_its_pool_and_id() {
    let Some((pool, image)) = fresh_image("id", MIB as u64) else {
        return;
    };
    assert!(Arc::ptr_eq(image.pool(), &pool));
    let id = image.id().expect("image id");
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
    assert_eq!(image.id().unwrap(), id, "stable");
}

/// A fresh connection ("gateway") to the test cluster's pool `rbd`.
fn gateway(conf: &std::path::Path) -> Arc<Pool> {
    Cluster::connect(conf, "admin", &[])
        .expect("connect")
        .pool("rbd")
        .expect("pool rbd")
}

/// The name of a shared object for test `name`, removed if a previous run left it.
fn fresh_object_name(pool: &Arc<Pool>, name: &str) -> String {
    let name = format!("ffi-obj-{name}-{}", std::process::id());
    match pool.shared_object(&name).unwrap().remove() {
        Ok(()) => {}
        Err(e) => assert_eq!(e.errno(), libc::ENOENT, "{e}"),
    }
    name
}

/// A watch callback recording each notification's payload.
fn recorder(seen: &Arc<Mutex<Vec<Vec<u8>>>>) -> impl Fn(WatchEvent<'_>) + Send + Sync + 'static {
    let seen = Arc::clone(seen);
    move |event| {
        if let WatchEvent::Notified(payload) = event {
            seen.lock().unwrap().push(payload.to_vec());
        }
    }
}

#[test]
fn shared_object_replace_is_compare_and_swap_on_the_version() {
    let Some(conf) = cluster_conf() else {
        return;
    };
    let pool = gateway(&conf);
    let name = fresh_object_name(&pool, "cas");
    let object = pool.shared_object(&name).unwrap();
    assert_eq!(object.read().unwrap(), None, "missing object");
    assert!(object.replace(None, 1, b"first").unwrap(), "created");
    assert_eq!(object.read().unwrap(), Some((1, b"first".to_vec())));
    assert!(
        !object.replace(None, 2, b"second").unwrap(),
        "exists already"
    );
    assert!(
        !object.replace(Some(7), 2, b"second").unwrap(),
        "stale version"
    );
    assert_eq!(
        object.read().unwrap(),
        Some((1, b"first".to_vec())),
        "nothing written on a lost race"
    );
    assert!(object.replace(Some(1), 2, b"second").unwrap());
    assert_eq!(object.read().unwrap(), Some((2, b"second".to_vec())));

    // A shorter record replaces the whole data; a record larger than the first read's
    // buffer is read whole; an empty one is empty.
    assert!(object.replace(Some(2), 3, b"x").unwrap());
    assert_eq!(object.read().unwrap(), Some((3, b"x".to_vec())));
    let large: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    assert!(object.replace(Some(3), 4, &large).unwrap());
    assert_eq!(object.read().unwrap(), Some((4, large)));
    assert!(object.replace(Some(4), 5, b"").unwrap());
    assert_eq!(object.read().unwrap(), Some((5, Vec::new())));

    object.remove().unwrap();
    assert_eq!(object.read().unwrap(), None);
    assert!(
        !object.replace(Some(5), 6, b"gone").unwrap(),
        "removed by another writer"
    );
    assert_eq!(object.read().unwrap(), None, "nothing created");
    assert_eq!(object.remove().unwrap_err().errno(), libc::ENOENT);
    let e = object.watch(|_| {}).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "watching creates nothing: {e}");
}

#[test]
fn notify_returns_after_every_watcher_saw_the_payload() {
    let Some(conf) = cluster_conf() else {
        return;
    };
    let (pool_a, pool_b) = (gateway(&conf), gateway(&conf));
    let name = fresh_object_name(&pool_a, "notify");
    let a = pool_a.shared_object(&name).unwrap();
    let b = pool_b.shared_object(&name).unwrap();
    assert!(a.replace(None, 1, b"record").unwrap());
    let seen_a = Arc::new(Mutex::new(Vec::new()));
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    a.watch(recorder(&seen_a)).unwrap();
    b.watch(recorder(&seen_b)).unwrap();
    assert_eq!(
        a.watch(|_| {}).unwrap_err().errno(),
        libc::EBUSY,
        "one watch per handle"
    );

    assert!(
        a.notify(b"changed", Duration::from_secs(30))
            .unwrap()
            .is_empty(),
        "every watcher acknowledged"
    );
    // Acknowledged after the callbacks: both ran by now, no waiting needed.
    assert_eq!(*seen_a.lock().unwrap(), [b"changed".to_vec()]);
    assert_eq!(*seen_b.lock().unwrap(), [b"changed".to_vec()]);
    assert!(
        b.notify(b"", Duration::from_secs(30)).unwrap().is_empty(),
        "every watcher acknowledged"
    );
    assert_eq!(seen_a.lock().unwrap().last().unwrap(), b"");
    assert_eq!(seen_b.lock().unwrap().len(), 2);

    drop((a, b));
    pool_a.shared_object(&name).unwrap().remove().unwrap();
}

#[test]
fn notify_times_out_on_a_slow_watcher() {
    let Some(conf) = cluster_conf() else {
        return;
    };
    let (pool_a, pool_b) = (gateway(&conf), gateway(&conf));
    let name = fresh_object_name(&pool_a, "slow");
    let notifier = pool_a.shared_object(&name).unwrap();
    assert!(notifier.replace(None, 1, b"record").unwrap());
    // On its own connection: it holds up that connection's watch callbacks while it sleeps.
    let slow = pool_b.shared_object(&name).unwrap();
    slow.watch(|_| std::thread::sleep(Duration::from_secs(3)))
        .unwrap();
    let started = Instant::now();
    let silent = notifier.notify(b"anyone?", Duration::from_secs(1)).unwrap();
    let waited = started.elapsed();
    assert_eq!(silent, vec![slow.client_id()], "the slow watcher is named");
    assert_ne!(slow.client_id(), notifier.client_id());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "gave up after the timeout, before the watcher answered: {waited:?}"
    );
    // Dropping the watcher waits for its callback to end.
    drop(slow);
    notifier.remove().unwrap();
}

#[test]
fn dropping_a_watching_handle_removes_its_watch() {
    let Some(conf) = cluster_conf() else {
        return;
    };
    let (pool_a, pool_b) = (gateway(&conf), gateway(&conf));
    let name = fresh_object_name(&pool_a, "drop");
    let a: SharedObject = pool_a.shared_object(&name).unwrap();
    let b = pool_b.shared_object(&name).unwrap();
    assert!(a.replace(None, 1, b"record").unwrap());
    let seen_a = Arc::new(Mutex::new(Vec::new()));
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    a.watch(recorder(&seen_a)).unwrap();
    b.watch(recorder(&seen_b)).unwrap();
    assert!(
        a.notify(b"one", Duration::from_secs(30))
            .unwrap()
            .is_empty(),
        "every watcher acknowledged"
    );
    drop(a);
    // a's connection stays up (pool_a lives), so only the unwatch can have removed it: a
    // watch left behind would never acknowledge, and the notify would time out.
    let started = Instant::now();
    assert!(
        b.notify(b"two", Duration::from_secs(10))
            .unwrap()
            .is_empty(),
        "every watcher acknowledged"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*seen_a.lock().unwrap(), [b"one".to_vec()]);
    assert_eq!(*seen_b.lock().unwrap(), [b"one".to_vec(), b"two".to_vec()]);
    // A handle without a watch drops at once; the object stays.
    let c = pool_a.shared_object(&name).unwrap();
    drop(c);
    assert_eq!(b.read().unwrap(), Some((1, b"record".to_vec())));
    b.remove().unwrap();
}

#[test]
fn a_lost_watch_is_registered_again_and_reported() {
    let Some(conf) = cluster_conf() else {
        return;
    };
    // This connection never pings its watches (the objecter's tick sends the pings), so the
    // OSD drops its watch after osd_client_watch_timeout (30 s) and librados reports it lost.
    let silent = Cluster::connect(&conf, "admin", &[("objecter_tick_interval", "3600")])
        .expect("connect")
        .pool("rbd")
        .expect("pool rbd");
    let pool = gateway(&conf);
    let name = fresh_object_name(&pool, "rewatch");
    let notifier = pool.shared_object(&name).unwrap();
    assert!(notifier.replace(None, 1, b"record").unwrap());
    let watcher = silent.shared_object(&name).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    watcher
        .watch(move |event| {
            let event = match event {
                WatchEvent::Notified(payload) => Some(payload.to_vec()),
                WatchEvent::Reestablished => None,
            };
            tx.lock().unwrap().send(event).unwrap();
        })
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(120))
            .expect("re-watched"),
        None,
        "Reestablished"
    );
    eprintln!(
        "watch lost and registered again after {:?}",
        started.elapsed()
    );
    // The new watch delivers notifications.
    assert!(
        notifier
            .notify(b"after", Duration::from_secs(10))
            .unwrap()
            .is_empty(),
        "every watcher acknowledged"
    );
    assert_eq!(rx.try_recv().unwrap(), Some(b"after".to_vec()));
    drop(watcher);
    notifier.remove().unwrap();
}
