//! A LUN's `backing`: RAM, file, block device or RBD image, read as one serde shape and
//! resolved into [`Backing`] with the checks each type needs.

use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value;

use super::error::{err, CResult};
use super::values::{check_abs_path, parse_size_value, ranged};
use super::{Backing, RbdBacking, DEFAULT_RBD_TIMEOUT_SECS, MAX_RAM_SIZE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBacking {
    #[serde(rename = "type")]
    kind: Option<String>,
    size: Option<Value>,
    path: Option<String>,
    create: Option<bool>,
    pool: Option<String>,
    image: Option<String>,
    conf: Option<String>,
    user: Option<String>,
    timeout_secs: Option<u64>,
}

impl RawBacking {
    pub(super) fn resolve(self, path: &str, block_size: u32) -> CResult<Backing> {
        // Block devices take no size; say so before complaining about its value.
        if self.kind.as_deref() == Some("block") && self.size.is_some() {
            return err(
                &format!("{path}.size"),
                "not used by type block; a block device reports its own size",
            );
        }
        let size = match &self.size {
            None => None,
            Some(v) => {
                let field = format!("{path}.size");
                let s = parse_size_value(&field, v)?;
                check_size_fits_blocks(&field, s, block_size)?;
                Some(s)
            }
        };
        let not_used = |field: &str, kind: &str, why: &str| {
            err::<Backing>(
                &format!("{path}.{field}"),
                format!("not used by type {kind}; {why}"),
            )
        };
        if self.kind.as_deref() != Some("rbd") {
            let rbd_only = [
                ("pool", self.pool.is_some()),
                ("image", self.image.is_some()),
                ("conf", self.conf.is_some()),
                ("user", self.user.is_some()),
                ("timeout_secs", self.timeout_secs.is_some()),
            ];
            if let Some((field, _)) = rbd_only.iter().find(|(_, set)| *set) {
                let kind = self.kind.as_deref().unwrap_or("(none)");
                return not_used(
                    field,
                    kind,
                    "only type rbd takes pool, image, conf, user and timeout_secs",
                );
            }
        }
        match self.kind.as_deref() {
            None => err(&format!("{path}.type"), "required: ram, file, block or rbd"),
            Some("ram") => {
                if self.path.is_some() {
                    return not_used("path", "ram", "ram takes only size");
                }
                if self.create.is_some() {
                    return not_used("create", "ram", "ram takes only size");
                }
                let Some(size) = size else {
                    return err(
                        &format!("{path}.size"),
                        "required for type ram, e.g. 1G or 512MiB",
                    );
                };
                if size > MAX_RAM_SIZE {
                    return err(
                        &format!("{path}.size"),
                        format!("{size} bytes is more than the 1 TiB limit for RAM LUNs"),
                    );
                }
                Ok(Backing::Ram { size })
            }
            Some("file") => {
                let file = check_abs_path(&format!("{path}.path"), self.path, "file")?;
                let create = self.create.unwrap_or(false);
                if create && size.is_none() {
                    return err(
                        &format!("{path}.size"),
                        "required when create: true, so the new file can be sized",
                    );
                }
                Ok(Backing::File {
                    path: file,
                    size,
                    create,
                })
            }
            Some("block") => {
                if self.create.is_some() {
                    return not_used("create", "block", "block devices are never created");
                }
                let dev = check_abs_path(&format!("{path}.path"), self.path, "block")?;
                Ok(Backing::Block { path: dev })
            }
            Some("rbd") => {
                if self.path.is_some() {
                    return not_used("path", "rbd", "an RBD image is named by pool and image");
                }
                let create = self.create.unwrap_or(false);
                if create && size.is_none() {
                    return err(
                        &format!("{path}.size"),
                        "required when create: true, so the new image can be sized",
                    );
                }
                let conf = match self.conf {
                    None => PathBuf::from(DEFAULT_CEPH_CONF),
                    Some(conf) => check_abs_path(&format!("{path}.conf"), Some(conf), "rbd")?,
                };
                Ok(Backing::Rbd(RbdBacking {
                    pool: check_rados_name(&format!("{path}.pool"), self.pool, "pool")?,
                    image: check_rados_name(&format!("{path}.image"), self.image, "image")?,
                    size,
                    create,
                    conf,
                    user: check_cephx_id(&format!("{path}.user"), self.user)?,
                    timeout_secs: ranged(
                        &format!("{path}.timeout_secs"),
                        self.timeout_secs,
                        DEFAULT_RBD_TIMEOUT_SECS,
                        1,
                        3600,
                    )?,
                }))
            }
            Some(other) => err(
                &format!("{path}.type"),
                format!("\"{other}\" is not a backing type; use ram, file, block or rbd"),
            ),
        }
    }
}

/// The ceph.conf an RBD backing uses when `conf` is not given.
const DEFAULT_CEPH_CONF: &str = "/etc/ceph/ceph.conf";
/// The cephx id an RBD backing uses when `user` is not given.
const DEFAULT_CEPH_USER: &str = "admin";

/// A pool or image name: required, printable ASCII without spaces, and without the `/` and
/// `@` that the `rbd` tool reads as pool and snapshot separators.
fn check_rados_name(field: &str, name: Option<String>, what: &str) -> CResult<String> {
    let Some(name) = name else {
        return err(field, format!("required for type rbd: the {what} name"));
    };
    let bad = name
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '/' || c == '@');
    if name.is_empty() || name.len() > 255 || bad.is_some() {
        return err(
            field,
            format!(
                "\"{name}\" is not a usable {what} name; use 1-255 printable ASCII characters \
                 without spaces, '/' or '@'"
            ),
        );
    }
    Ok(name)
}

/// A cephx id such as `admin` or `iscsi-gw` (without the `client.` prefix).
fn check_cephx_id(field: &str, user: Option<String>) -> CResult<String> {
    let Some(user) = user else {
        return Ok(DEFAULT_CEPH_USER.to_string());
    };
    if let Some(id) = user.strip_prefix("client.") {
        return err(
            field,
            format!("\"{user}\": give the cephx id without \"client.\", e.g. {id}"),
        );
    }
    if user.is_empty() || user.len() > 255 || !user.chars().all(|c| c.is_ascii_graphic()) {
        return err(
            field,
            format!("\"{user}\" is not a cephx id; use printable ASCII without spaces"),
        );
    }
    Ok(user)
}

fn check_size_fits_blocks(field: &str, size: u64, block_size: u32) -> CResult<()> {
    if size == 0 {
        return err(field, "must be greater than 0");
    }
    if size % u64::from(block_size) != 0 {
        return err(
            field,
            format!("{size} bytes is not a multiple of block_size {block_size}"),
        );
    }
    Ok(())
}
