//! Error type: every failing verbs/rdma_cm call carries its errno.

use std::io;

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libibverbs / librdmacm / libc call failed with an errno.
    #[error("{op} failed: {source}")]
    Os {
        /// The failing call.
        op: &'static str,
        /// The errno, as an `io::Error`.
        #[source]
        source: io::Error,
    },
    /// An argument was rejected before calling into the library.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A bounded wait expired.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Error from the current `errno` (for calls returning -1 / NULL).
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// Error from an errno value returned directly (`ibv_post_*`, `ibv_modify_qp`).
    pub(crate) fn from_errno(op: &'static str, errno: i32) -> Self {
        Error::Os {
            op,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The errno, if this error came from the OS / library.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Map the `-1 + errno` convention of librdmacm (and most of libibverbs'
/// non-post calls) to a `Result`.
pub(crate) fn check_rdma(op: &'static str, ret: i32) -> Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(Error::last_os(op))
    }
}

/// Map the "return the errno" convention of `ibv_post_*`, `ibv_modify_qp`,
/// `ibv_query_*` and `ibv_dereg_mr` to a `Result`. Some providers return -1
/// with errno set instead; handle that too.
pub(crate) fn check_ibv(op: &'static str, ret: i32) -> Result<()> {
    match ret {
        0 => Ok(()),
        -1 => Err(Error::last_os(op)),
        e if e < 0 => Err(Error::from_errno(op, -e)),
        e => Err(Error::from_errno(op, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_conventions() {
        assert!(check_ibv("x", 0).is_ok());
        assert_eq!(
            check_ibv("ibv_post_send", libc::ENOMEM)
                .unwrap_err()
                .errno(),
            Some(libc::ENOMEM)
        );
        assert_eq!(
            check_ibv("ibv_post_send", -libc::EINVAL)
                .unwrap_err()
                .errno(),
            Some(libc::EINVAL)
        );
        assert_eq!(Error::Timeout("t").errno(), None);
        let e = Error::from_errno("rdma_accept", libc::EINVAL);
        assert!(e.to_string().contains("rdma_accept"));
    }
}
