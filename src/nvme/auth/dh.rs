//! The Diffie-Hellman groups of DH-HMAC-CHAP (NVMe base 2.0 §8.13.5.1: NULL and RFC 7919's
//! ffdhe2048 to ffdhe8192, generator 2) and one side's ephemeral exchange in them. With a group
//! other than NULL, each exchange makes a fresh key pair, and the responses are computed over
//! challenges augmented with the shared secret (`secret::Exchange`).

use std::sync::OnceLock;

use num_bigint::BigUint;

use crate::random::{RandomSource, RandomUnavailable};

/// A DH group, by its identifier in Negotiate and Challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhGroup {
    /// No Diffie-Hellman exchange: challenges are used as they are.
    Null = 0,
    Ffdhe2048 = 1,
    Ffdhe3072 = 2,
    Ffdhe4096 = 3,
    Ffdhe6144 = 4,
    Ffdhe8192 = 5,
}

impl DhGroup {
    pub const ALL: [DhGroup; 6] = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe8192,
    ];

    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.id() == id)
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// The name Linux's nvmet takes in `dhchap_dhgroup` and our configuration too.
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    /// Bytes of a public value and of the shared secret: the prime's length (0 for NULL).
    pub fn value_len(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 256,
            DhGroup::Ffdhe3072 => 384,
            DhGroup::Ffdhe4096 => 512,
            DhGroup::Ffdhe6144 => 768,
            DhGroup::Ffdhe8192 => 1024,
        }
    }

    /// Bytes of our private exponents: at least twice the group's security strength in bits
    /// (RFC 7919 §5.2 and its Table 2: 103 to 200 bits of strength), the sizes OpenSSL uses
    /// (225 to 400 bits), rounded up to bytes. Longer ones only cost time.
    pub fn private_len(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 29,
            DhGroup::Ffdhe3072 => 35,
            DhGroup::Ffdhe4096 => 41,
            DhGroup::Ffdhe6144 => 47,
            DhGroup::Ffdhe8192 => 50,
        }
    }

    /// The group's prime, parsed once.
    fn prime(self) -> Option<&'static BigUint> {
        static PRIMES: OnceLock<Vec<BigUint>> = OnceLock::new();
        let primes = PRIMES.get_or_init(|| {
            [FFDHE2048, FFDHE3072, FFDHE4096, FFDHE6144, FFDHE8192]
                .iter()
                .map(|hex| BigUint::parse_bytes(hex.as_bytes(), 16).expect("an RFC 7919 prime"))
                .collect()
        });
        (self != DhGroup::Null).then(|| &primes[usize::from(self.id()) - 1])
    }
}

/// One side's key pair for one exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    group: DhGroup,
    private: BigUint,
    public: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({}, <private>)", self.group.name())
    }
}

/// The peer's public value is not one of the group (RFC 7919 §5.1: 1 < y < p - 1), or not of
/// its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPublicValue;

impl KeyPair {
    /// A fresh key pair in `group` (not NULL) from `random`.
    pub fn generate(group: DhGroup, random: RandomSource) -> Result<KeyPair, RandomUnavailable> {
        let mut private = vec![0u8; group.private_len()];
        random(&mut private)?;
        Ok(KeyPair::from_private(group, &private))
    }

    /// The key pair in `group` (not NULL) whose private exponent is `private`, big-endian
    /// (fresh random bytes, [`DhGroup::private_len`] of them).
    pub fn from_private(group: DhGroup, private: &[u8]) -> KeyPair {
        let prime = group.prime().expect("a group with a prime");
        // At least 2: a private exponent of 0 or 1 gives a public value of 1 or 2.
        let private = BigUint::from_bytes_be(private).max(BigUint::from(2u8));
        let public = padded(
            &BigUint::from(2u8).modpow(&private, prime),
            group.value_len(),
        );
        KeyPair {
            group,
            private,
            public,
        }
    }

    /// g^x mod p, big-endian, as long as the prime.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret y^x mod p with the peer's public value y, as long as the prime (Linux
    /// hashes it so, padded: crypto/dh.c writes the value to the prime's length).
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Vec<u8>, InvalidPublicValue> {
        let y = self.check_peer(peer)?;
        Ok(self.exponentiate(&y))
    }

    /// The peer's public value as a number, if it is one of the group's (cheap: no
    /// exponentiation).
    pub fn check_peer(&self, peer: &[u8]) -> Result<BigUint, InvalidPublicValue> {
        let prime = self.group.prime().expect("a group with a prime");
        if peer.len() != self.group.value_len() {
            return Err(InvalidPublicValue);
        }
        let y = BigUint::from_bytes_be(peer);
        let one = BigUint::from(1u8);
        if y <= one || y >= prime - &one {
            return Err(InvalidPublicValue);
        }
        Ok(y)
    }

    /// y^x mod p for a checked `y`, padded to the prime's length.
    fn exponentiate(&self, y: &BigUint) -> Vec<u8> {
        let prime = self.group.prime().expect("a group with a prime");
        padded(&y.modpow(&self.private, prime), self.group.value_len())
    }
}

/// An exponentiation an exchange waits for. Each takes from about a millisecond (ffdhe2048)
/// to tens of them (ffdhe8192) on a core of today's servers, long enough to stall every other
/// connection of an I/O thread, and any peer that names an allowed host can ask for two per
/// queue before proving anything: so the state machine hands them out ([`DhWork::run`]) and
/// the environment runs them off its I/O threads, as Linux's nvmet runs its exchanges on a
/// workqueue (drivers/nvme/target/fabrics-cmd-auth.c).
#[derive(Clone, PartialEq, Eq)]
pub struct DhWork(Work);

#[derive(Clone, PartialEq, Eq)]
enum Work {
    /// Our key pair from these private bytes.
    Generate { group: DhGroup, private: Vec<u8> },
    /// The secret shared with a peer whose public value was checked.
    Shared {
        key_pair: KeyPair,
        peer: Vec<u8>,
        y: BigUint,
    },
}

/// What a [`DhWork`] computed, for the exchange that asked.
#[derive(Clone, PartialEq, Eq)]
pub struct DhResult(Computed);

#[derive(Clone, PartialEq, Eq)]
pub(super) enum Computed {
    Generated(KeyPair),
    /// The shared secret with the peer whose public value is `peer`.
    Shared {
        peer: Vec<u8>,
        secret: Vec<u8>,
    },
}

impl DhWork {
    /// Work that generates a key pair in `group` from `private` ([`KeyPair::from_private`]).
    pub(super) fn generate(group: DhGroup, private: Vec<u8>) -> DhWork {
        DhWork(Work::Generate { group, private })
    }

    /// Work that computes the secret `key_pair` shares with `peer`, or `Err` at once when
    /// `peer` is not one of the group's.
    pub(super) fn shared(key_pair: &KeyPair, peer: &[u8]) -> Result<DhWork, InvalidPublicValue> {
        let y = key_pair.check_peer(peer)?;
        Ok(DhWork(Work::Shared {
            key_pair: key_pair.clone(),
            peer: peer.to_vec(),
            y,
        }))
    }

    /// Does the exponentiation; on any thread.
    pub fn run(self) -> DhResult {
        DhResult(match self.0 {
            Work::Generate { group, private } => {
                Computed::Generated(KeyPair::from_private(group, &private))
            }
            Work::Shared { key_pair, peer, y } => Computed::Shared {
                secret: key_pair.exponentiate(&y),
                peer,
            },
        })
    }
}

impl DhResult {
    pub(super) fn into_computed(self) -> Computed {
        self.0
    }
}

impl std::fmt::Debug for DhWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Work::Generate { group, .. } => write!(f, "DhWork(generate {})", group.name()),
            Work::Shared { key_pair, .. } => {
                write!(f, "DhWork(shared secret in {})", key_pair.group.name())
            }
        }
    }
}

impl std::fmt::Debug for DhResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Computed::Generated(key_pair) => write!(f, "DhResult({key_pair:?})"),
            Computed::Shared { .. } => f.write_str("DhResult(<shared secret>)"),
        }
    }
}

/// `n` big-endian in exactly `len` bytes.
fn padded(n: &BigUint, len: usize) -> Vec<u8> {
    let bytes = n.to_bytes_be();
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(&bytes);
    out
}

// The RFC 7919 Appendix A primes (checked in the tests against OpenSSL's key pairs).
const FFDHE2048: &str = "\
    FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695\
    A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A\
    D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935\
    984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A\
    BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4\
    AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61\
    9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005\
    C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF";

const FFDHE3072: &str = "\
    FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695\
    A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A\
    D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935\
    984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A\
    BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4\
    AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61\
    9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005\
    C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B\
    BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C\
    AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF\
    5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E\
    0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF";

const FFDHE4096: &str = "\
    FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695\
    A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A\
    D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935\
    984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A\
    BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4\
    AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61\
    9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005\
    C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B\
    BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C\
    AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF\
    5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E\
    0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB\
    7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A\
    7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038\
    092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF\
    8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF";

const FFDHE6144: &str = "\
    FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695\
    A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A\
    D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935\
    984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A\
    BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4\
    AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61\
    9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005\
    C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B\
    BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C\
    AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF\
    5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E\
    0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB\
    7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A\
    7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038\
    092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF\
    8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A\
    4E677D2C38532A3A23BA4442CAF53EA63BB454329B7624C8917BDD64B1C0FD4C\
    B38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477\
    A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E\
    7FB29F8C183023C3587E38DA0077D9B4763E4E4B94B2BBC194C6651E77CAF992\
    EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C\
    D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B9117\
    8CCF2DD5CACEF403EC9D1810C6272B045B3B71F9DC6B80D63FDD4A8E9ADB1E69\
    62A69526D43161C1A41D570D7938DAD4A40E329CD0E40E65FFFFFFFFFFFFFFFF";

const FFDHE8192: &str = "\
    FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695\
    A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A\
    D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935\
    984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A\
    BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4\
    AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61\
    9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005\
    C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B\
    BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C\
    AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF\
    5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E\
    0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB\
    7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A\
    7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038\
    092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF\
    8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A\
    4E677D2C38532A3A23BA4442CAF53EA63BB454329B7624C8917BDD64B1C0FD4C\
    B38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477\
    A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E\
    7FB29F8C183023C3587E38DA0077D9B4763E4E4B94B2BBC194C6651E77CAF992\
    EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C\
    D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B9117\
    8CCF2DD5CACEF403EC9D1810C6272B045B3B71F9DC6B80D63FDD4A8E9ADB1E69\
    62A69526D43161C1A41D570D7938DAD4A40E329CCFF46AAA36AD004CF600C838\
    1E425A31D951AE64FDB23FCEC9509D43687FEB69EDD1CC5E0B8CC3BDF64B10EF\
    86B63142A3AB8829555B2F747C932665CB2C0F1CC01BD70229388839D2AF05E4\
    54504AC78B7582822846C0BA35C35F5C59160CC046FD8251541FC68C9C86B022\
    BB7099876A460E7451A8A93109703FEE1C217E6C3826E52C51AA691E0E423CFC\
    99E9E31650C1217B624816CDAD9A95F9D5B8019488D9C0A0A1FE3075A577E231\
    83F81D4A3F2FA4571EFC8CE0BA8A4FE8B6855DFE72B0A66EDED2FBABFBE58A30\
    FAFABE1C5D71A87E2F741EF8C1FE86FEA6BBFDE530677F0D97D11D49F7A8443D\
    0822E506A9F4614E011E2A94838FF88CD68C8BB7C5C6424CFFFFFFFFFFFFFFFF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primes_are_rfc_7919s() {
        for group in &DhGroup::ALL[1..] {
            let p = group.prime().unwrap();
            assert_eq!(p.bits() as usize, group.value_len() * 8, "{group:?}");
            // RFC 7919: the top and bottom 64 bits are all ones.
            let bytes = p.to_bytes_be();
            assert!(bytes[..8]
                .iter()
                .chain(&bytes[bytes.len() - 8..])
                .all(|&b| b == 0xFF));
        }
        // OpenSSL 3.0's `genpkey -algorithm DH -pkeyopt group:ffdhe2048`: this private key
        // gives this public key, so the prime is the one OpenSSL has.
        let private = BigUint::parse_bytes(
            b"0102958f034ee819c22725b05b76e86350a668ba62132ef03f7cff9f9b",
            16,
        )
        .unwrap();
        let public = "224d06805b9c5cb4288d919e2e1bd14c0e8ca014d22902a42327a5919b44b19e4cfb45613da537f80907c34edc70311ba0be3857924c3255d6d9c476fbe7c608b39733ff3dc1fbfb286eb840c8e3626f1bc2b937a9f73748877459d9a0795338aad5aa0866d2bd7daa2aa0d8dbc2aed6afe3b17a5f592a1f1639a81a9ee78d6d77f911ea197e24f74327c678ca216698c067afb03470e1645528bc7714ab5c14a1104e277d5ca0b8b7fb77875e16d68584d9ff7bb8575c6ad691f411390b5af873bc1b8683b206a255a126c0a22d837dd472ff21747a7ca8e76ceaa547f3b98d2108d4c498eb1fdd2db28a03e6d7062a29447b4778e0628c9c5be1e85266d7b6";
        let p = DhGroup::Ffdhe2048.prime().unwrap();
        let y = BigUint::from(2u8).modpow(&private, p);
        assert_eq!(crate::hex(&padded(&y, 256)), public);
    }

    fn fill(value: u8) -> RandomSource {
        match value {
            1 => |b: &mut [u8]| {
                b.fill(0x31);
                Ok(())
            },
            _ => |b: &mut [u8]| {
                b.fill(0x7B);
                Ok(())
            },
        }
    }

    #[test]
    fn both_sides_reach_the_same_secret() {
        for group in [DhGroup::Ffdhe2048, DhGroup::Ffdhe8192] {
            let a = KeyPair::generate(group, fill(1)).unwrap();
            let b = KeyPair::generate(group, fill(2)).unwrap();
            assert_eq!(a.public_value().len(), group.value_len());
            let secret = a.shared_secret(b.public_value()).unwrap();
            assert_eq!(secret, b.shared_secret(a.public_value()).unwrap());
            assert_eq!(secret.len(), group.value_len());
        }
    }

    #[test]
    fn public_values_outside_the_group_are_refused() {
        let group = DhGroup::Ffdhe2048;
        let a = KeyPair::generate(group, fill(1)).unwrap();
        let p = padded(group.prime().unwrap(), 256);
        let mut p_minus_1 = p.clone();
        p_minus_1[255] -= 1;
        let mut one = vec![0u8; 256];
        one[255] = 1;
        for bad in [vec![0u8; 256], one, p_minus_1, p, vec![2u8; 255]] {
            assert_eq!(a.shared_secret(&bad), Err(InvalidPublicValue));
        }
    }

    #[test]
    fn names_and_ids() {
        for g in DhGroup::ALL {
            assert_eq!(DhGroup::from_name(g.name()), Some(g));
            assert_eq!(DhGroup::from_id(g.id()), Some(g));
        }
        assert_eq!(DhGroup::from_id(6), None);
        assert_eq!(DhGroup::from_name("ffdhe1024"), None);
    }
}
