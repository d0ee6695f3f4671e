//! The few librados and librbd functions the wrapper uses, declared by hand from Debian's
//! `/usr/include/rados/librados.h` and `/usr/include/rbd/librbd.h` (Ceph 16, Pacific). The
//! libraries ship no pkg-config files, so they are linked by name.

use libc::{c_char, c_int, c_void, size_t, ssize_t};

pub type RadosT = *mut c_void;
pub type RadosIoctxT = *mut c_void;
pub type RbdImageT = *mut c_void;
pub type RbdCompletionT = *mut c_void;
pub type RbdCallbackT = Option<unsafe extern "C" fn(cb: RbdCompletionT, arg: *mut c_void)>;
pub type RbdUpdateCallbackT = Option<unsafe extern "C" fn(arg: *mut c_void)>;

#[link(name = "rados")]
extern "C" {
    pub fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: RadosT) -> c_int;
    pub fn rados_shutdown(cluster: RadosT);
    pub fn rados_ioctx_create(cluster: RadosT, pool: *const c_char, io: *mut RadosIoctxT) -> c_int;
    pub fn rados_ioctx_destroy(io: RadosIoctxT);
}

#[link(name = "rbd")]
extern "C" {
    pub fn rbd_create(io: RadosIoctxT, name: *const c_char, size: u64, order: *mut c_int) -> c_int;
    pub fn rbd_open(
        io: RadosIoctxT,
        name: *const c_char,
        image: *mut RbdImageT,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: RbdImageT) -> c_int;
    pub fn rbd_get_size(image: RbdImageT, size: *mut u64) -> c_int;
    pub fn rbd_get_id(image: RbdImageT, id: *mut c_char, id_len: size_t) -> c_int;
    pub fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
    pub fn rbd_update_watch(
        image: RbdImageT,
        handle: *mut u64,
        watch_cb: RbdUpdateCallbackT,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_update_unwatch(image: RbdImageT, handle: u64) -> c_int;

    pub fn rbd_read(image: RbdImageT, ofs: u64, len: size_t, buf: *mut c_char) -> ssize_t;
    pub fn rbd_write(image: RbdImageT, ofs: u64, len: size_t, buf: *const c_char) -> ssize_t;
    pub fn rbd_flush(image: RbdImageT) -> c_int;
    pub fn rbd_discard(image: RbdImageT, ofs: u64, len: u64) -> c_int;
    pub fn rbd_write_zeroes(
        image: RbdImageT,
        ofs: u64,
        len: size_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> ssize_t;

    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: RbdCallbackT,
        c: *mut RbdCompletionT,
    ) -> c_int;
    pub fn rbd_aio_get_return_value(c: RbdCompletionT) -> ssize_t;
    pub fn rbd_aio_release(c: RbdCompletionT);

    pub fn rbd_aio_read(
        image: RbdImageT,
        off: u64,
        len: size_t,
        buf: *mut c_char,
        c: RbdCompletionT,
    ) -> c_int;
    pub fn rbd_aio_write(
        image: RbdImageT,
        off: u64,
        len: size_t,
        buf: *const c_char,
        c: RbdCompletionT,
    ) -> c_int;
    pub fn rbd_aio_flush(image: RbdImageT, c: RbdCompletionT) -> c_int;
    pub fn rbd_aio_discard(image: RbdImageT, off: u64, len: u64, c: RbdCompletionT) -> c_int;
    pub fn rbd_aio_write_zeroes(
        image: RbdImageT,
        off: u64,
        len: size_t,
        c: RbdCompletionT,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_compare_and_write(
        image: RbdImageT,
        off: u64,
        len: size_t,
        cmp_buf: *const c_char,
        buf: *const c_char,
        c: RbdCompletionT,
        mismatch_off: *mut u64,
        op_flags: c_int,
    ) -> ssize_t;
}
