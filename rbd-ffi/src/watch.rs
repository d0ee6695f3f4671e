//! Following an image's size as others resize it ([`crate::Image::watch_size`]).
//!
//! librbd calls an update watcher (`rbd_update_watch`) whenever the image's header changes:
//! a resize, a snapshot, a feature change, from any client. The callback runs on a librbd
//! thread and only wakes a thread of ours, which asks for the size (`rbd_get_size`, which
//! refreshes the image and may wait on the OSDs) and reports it when it changed.

use std::ffi::c_void;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use crate::{check, sys, Error};

/// A registered update watch and the thread that reads the size.
pub(crate) struct SizeWatch {
    image: sys::RbdImageT,
    handle: u64,
    notifier: *mut Notifier,
    thread: JoinHandle<()>,
}

// SAFETY: the raw pointers are only used by `stop`, which may run on any thread: librbd
// image handles are thread-safe, and the notifier is only freed there.
unsafe impl Send for SizeWatch {}

/// What librbd's callback gets as its argument: a way to wake the size thread.
struct Notifier {
    wake: Mutex<mpsc::Sender<()>>,
}

/// An image handle moved to the size thread.
struct ImageHandle(sys::RbdImageT);

// SAFETY: librbd image handles are thread-safe; the image stays open until the size thread
// has been joined (`SizeWatch::stop` runs before `rbd_close`).
unsafe impl Send for ImageHandle {}

impl ImageHandle {
    fn get(&self) -> sys::RbdImageT {
        self.0
    }
}

/// librbd's update callback (on a librbd thread): wakes the size thread, never blocks.
unsafe extern "C" fn updated(arg: *mut c_void) {
    // SAFETY: `arg` is the Notifier leaked by `SizeWatch::start`, freed only after
    // rbd_update_unwatch returned, which waits for callbacks under way.
    let notifier = unsafe { &*arg.cast::<Notifier>() };
    let wake = notifier.wake.lock().unwrap_or_else(|p| p.into_inner());
    // The size thread only goes away after the watch is removed: a failed send is moot.
    let _ = wake.send(());
}

impl SizeWatch {
    /// Watches `image` (open, of `size` bytes now): `on_change` gets each new size.
    pub(crate) fn start(
        image: sys::RbdImageT,
        size: u64,
        on_change: Box<dyn Fn(u64) + Send>,
    ) -> Result<SizeWatch, Error> {
        let (wake, woken) = mpsc::channel();
        let notifier = Box::into_raw(Box::new(Notifier {
            wake: Mutex::new(wake),
        }));
        let mut handle = 0u64;
        // SAFETY: the image is open; `updated` matches rbd_update_callback_t; `notifier`
        // stays valid until the watch is removed (`stop`) or refused (below).
        let ret =
            unsafe { sys::rbd_update_watch(image, &mut handle, Some(updated), notifier.cast()) };
        if let Err(e) = check("rbd_update_watch", ret.into()) {
            // SAFETY: librbd refused the watch, so it never calls back with `notifier`.
            drop(unsafe { Box::from_raw(notifier) });
            return Err(e);
        }
        let reader = ImageHandle(image);
        let spawned = std::thread::Builder::new()
            .name("rbd-watch".into())
            .spawn(move || follow(&reader, size, &woken, &*on_change));
        match spawned {
            Ok(thread) => Ok(SizeWatch {
                image,
                handle,
                notifier,
                thread,
            }),
            Err(_) => {
                // SAFETY: the watch was just registered on the open image.
                let ret = unsafe { sys::rbd_update_unwatch(image, handle) };
                if ret < 0 {
                    // librbd may still call back: the notifier must outlive the image.
                    log::error!("{}", Error::new("rbd_update_unwatch", ret.into()));
                } else {
                    // SAFETY: the watch is removed, no callback refers to `notifier` any more.
                    drop(unsafe { Box::from_raw(notifier) });
                }
                Err(Error::new("rbd_update_watch", -i64::from(libc::EAGAIN)))
            }
        }
    }

    /// Removes the watch and ends the size thread; the image is still open.
    pub(crate) fn stop(self) {
        // SAFETY: the image is open and the watch registered on it.
        let ret = unsafe { sys::rbd_update_unwatch(self.image, self.handle) };
        if ret < 0 {
            // librbd may still call back: the notifier is leaked, but its sender swapped for
            // one that wakes nobody, so the size thread ends before the image is closed.
            log::error!("{}", Error::new("rbd_update_unwatch", ret.into()));
            // SAFETY: the notifier is never freed on this path; `updated` only locks it.
            let notifier = unsafe { &*self.notifier };
            *notifier.wake.lock().unwrap_or_else(|p| p.into_inner()) = mpsc::channel().0;
        } else {
            // SAFETY: the watch is removed and librbd has finished its callbacks: the
            // notifier is ours again. Dropping it ends the size thread's wait.
            drop(unsafe { Box::from_raw(self.notifier) });
        }
        if self.thread.join().is_err() {
            log::error!("the RBD size thread panicked");
        }
    }
}

/// The size thread: on each wake-up (several are merged), reads the size and reports it
/// when it changed. Ends when the notifier is dropped.
fn follow(
    image: &ImageHandle,
    mut known: u64,
    woken: &mpsc::Receiver<()>,
    on_change: &dyn Fn(u64),
) {
    while woken.recv().is_ok() {
        while woken.try_recv().is_ok() {}
        let mut size = 0u64;
        // SAFETY: the image stays open until this thread has been joined; `size` is a valid
        // out-pointer.
        let ret = unsafe { sys::rbd_get_size(image.get(), &mut size) };
        match check("rbd_get_size", ret.into()) {
            Ok(_) if size != known => {
                known = size;
                on_change(size);
            }
            Ok(_) => {}
            Err(e) => log::warn!("RBD image updated, but its size is unknown: {e}"),
        }
    }
}
