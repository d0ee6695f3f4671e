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
pub type RadosWriteOpT = *mut c_void;
pub type RadosReadOpT = *mut c_void;
pub type RadosXattrsIterT = *mut c_void;
pub type RadosWatchCb2T = Option<
    unsafe extern "C" fn(
        arg: *mut c_void,
        notify_id: u64,
        handle: u64,
        notifier_id: u64,
        data: *mut c_void,
        data_len: size_t,
    ),
>;
pub type RadosWatchErrCbT = Option<unsafe extern "C" fn(pre: *mut c_void, cookie: u64, err: c_int)>;

/// `rados_write_op_create`: fail with EEXIST when the object exists.
pub const LIBRADOS_CREATE_EXCLUSIVE: c_int = 1;
/// `rados_write_op_cmpxattr`: the xattr must equal the value.
pub const LIBRADOS_CMPXATTR_OP_EQ: u8 = 1;

#[link(name = "rados")]
extern "C" {
    pub fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: RadosT) -> c_int;
    pub fn rados_shutdown(cluster: RadosT);
    pub fn rados_ioctx_create(cluster: RadosT, pool: *const c_char, io: *mut RadosIoctxT) -> c_int;
    pub fn rados_ioctx_destroy(io: RadosIoctxT);
    pub fn rados_remove(io: RadosIoctxT, oid: *const c_char) -> c_int;
    pub fn rados_buffer_free(buf: *mut c_char);
    pub fn rados_get_instance_id(cluster: RadosT) -> u64;

    pub fn rados_create_write_op() -> RadosWriteOpT;
    pub fn rados_release_write_op(write_op: RadosWriteOpT);
    pub fn rados_write_op_create(
        write_op: RadosWriteOpT,
        exclusive: c_int,
        category: *const c_char,
    );
    pub fn rados_write_op_cmpxattr(
        write_op: RadosWriteOpT,
        name: *const c_char,
        comparison_operator: u8,
        value: *const c_char,
        value_len: size_t,
    );
    pub fn rados_write_op_write_full(write_op: RadosWriteOpT, buffer: *const c_char, len: size_t);
    pub fn rados_write_op_setxattr(
        write_op: RadosWriteOpT,
        name: *const c_char,
        value: *const c_char,
        value_len: size_t,
    );
    pub fn rados_write_op_operate(
        write_op: RadosWriteOpT,
        io: RadosIoctxT,
        oid: *const c_char,
        mtime: *mut libc::time_t,
        flags: c_int,
    ) -> c_int;

    pub fn rados_create_read_op() -> RadosReadOpT;
    pub fn rados_release_read_op(read_op: RadosReadOpT);
    pub fn rados_read_op_stat(
        read_op: RadosReadOpT,
        psize: *mut u64,
        pmtime: *mut libc::time_t,
        prval: *mut c_int,
    );
    pub fn rados_read_op_read(
        read_op: RadosReadOpT,
        offset: u64,
        len: size_t,
        buffer: *mut c_char,
        bytes_read: *mut size_t,
        prval: *mut c_int,
    );
    pub fn rados_read_op_getxattrs(
        read_op: RadosReadOpT,
        iter: *mut RadosXattrsIterT,
        prval: *mut c_int,
    );
    pub fn rados_read_op_operate(
        read_op: RadosReadOpT,
        io: RadosIoctxT,
        oid: *const c_char,
        flags: c_int,
    ) -> c_int;
    pub fn rados_getxattrs_next(
        iter: RadosXattrsIterT,
        name: *mut *const c_char,
        val: *mut *const c_char,
        len: *mut size_t,
    ) -> c_int;
    pub fn rados_getxattrs_end(iter: RadosXattrsIterT);

    pub fn rados_watch2(
        io: RadosIoctxT,
        o: *const c_char,
        cookie: *mut u64,
        watchcb: RadosWatchCb2T,
        watcherrcb: RadosWatchErrCbT,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rados_unwatch2(io: RadosIoctxT, cookie: u64) -> c_int;
    pub fn rados_watch_flush(cluster: RadosT) -> c_int;
    pub fn rados_notify2(
        io: RadosIoctxT,
        o: *const c_char,
        buf: *const c_char,
        buf_len: c_int,
        timeout_ms: u64,
        reply_buffer: *mut *mut c_char,
        reply_buffer_len: *mut size_t,
    ) -> c_int;
    pub fn rados_notify_ack(
        io: RadosIoctxT,
        o: *const c_char,
        notify_id: u64,
        cookie: u64,
        buf: *const c_char,
        buf_len: c_int,
    ) -> c_int;
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
