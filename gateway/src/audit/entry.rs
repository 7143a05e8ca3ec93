//! What a caller gives ([`AuditEntry`]) and what the trail keeps ([`AuditRecord`]): the action,
//! target and outcome vocabularies, each with a short stable string that is stored and hashed.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Declares a fieldless enum with one stable string per variant (`as_str`, `FromStr`, `ALL`).
macro_rules! stable_strings {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable string stored in the trail (and covered by the hash).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} '{other}' (one of: {})",
                        stringify!($name),
                        [$($text,)+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

stable_strings! {
    /// What was done. The strings are part of the hashed record: never rename one.
    Action {
        /// A successful login (password or PIN).
        Login => "login",
        /// A refused login (wrong password, disabled account, throttled).
        LoginFailed => "login_failed",
        /// A logoff, explicit or idle.
        Logoff => "logoff",
        /// A locked session reopened with the PIN (or a wrong PIN: outcome failed).
        Unlock => "unlock",
        /// Emergency access with a mandatory reason.
        BreakGlass => "break_glass",
        /// An alarm acknowledged.
        Acknowledge => "acknowledge",
        /// An alarm (or a bed's alarms) silenced.
        Silence => "silence",
        /// A bed's alarm limit changed (old and new values).
        LimitChange => "limit_change",
        UserAdd => "user_add",
        UserPasswd => "user_passwd",
        UserDisable => "user_disable",
        UserEnable => "user_enable",
        UserPin => "user_pin",
        UserRole => "user_role",
        TokenAdd => "token_add",
        TokenRevoke => "token_revoke",
        /// The gateway started; `new_value` is `sha256:<hex>` of the config file it runs.
        GatewayStart => "gateway_start",
        GatewayStop => "gateway_stop",
        /// The config file was re-read (SIGHUP, `systemctl reload`): `new_value` is
        /// `sha256:<hex>` of the file and what changed; a file that does not validate is
        /// refused (outcome denied) and the running config stays.
        ConfigReload => "config_reload",
        KeyCreated => "key_created",
        KeyRotated => "key_rotated",
        /// An ADT event applied to the census: account = sending application, source = peer.
        AdtApplied => "adt_applied",
        /// Patient data returned through the API (who read what).
        PatientRead => "patient_read",
        /// The store refused or failed a write.
        StoreFailure => "store_failure",
        /// The store refused a write because the disk budget was reached.
        BudgetRefusal => "budget_refusal",
    }
}

stable_strings! {
    /// The kind of thing an action was done to.
    TargetKind {
        /// No particular target (a login, the gateway start).
        None => "none",
        Bed => "bed",
        Alarm => "alarm",
        /// An alarm parameter of a bed (id e.g. `bed-01/150456`).
        Parameter => "parameter",
        Device => "device",
        User => "user",
        Token => "token",
        Config => "config",
        Key => "key",
        Patient => "patient",
        Store => "store",
        Gateway => "gateway",
    }
}

stable_strings! {
    /// How the action ended.
    Outcome {
        /// Done.
        Success => "success",
        /// Refused by a rule (role, throttle, bounds, budget): nothing changed.
        Denied => "denied",
        /// Attempted and failed (I/O, internal error).
        Failed => "failed",
    }
}

/// What an action was done to: a kind and its id (empty for [`TargetKind::None`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    pub kind: TargetKind,
    pub id: String,
}

impl Target {
    pub fn none() -> Self {
        Self::new(TargetKind::None, "")
    }

    pub fn new(kind: TargetKind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }
}

/// One audited action as the caller describes it. The trail adds seq, time, chain and signature.
///
/// Build it with [`AuditEntry::new`] and the chained setters, e.g.
/// `AuditEntry::new(Action::Acknowledge).by("nurse.jo", "nurse", "10.0.0.7:51234")
///     .target(TargetKind::Alarm, "spo2-01:low").bed("bed-01")`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// The authenticated account (or, for machine actions, the sending system); empty for the
    /// gateway itself.
    pub account: String,
    /// The account's role (`viewer`, `nurse`, `physician`, `biomed`, `service`...); empty when none.
    pub role: String,
    /// Where the request came from (`ip:port`), empty for local actions.
    pub source: String,
    pub action: Action,
    pub target: Target,
    /// The bed the action concerns, when any (so `audit show --bed` finds alarm and limit entries).
    pub bed: Option<String>,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

impl AuditEntry {
    /// A successful `action` on no target, by nobody yet: set the rest with the setters.
    pub fn new(action: Action) -> Self {
        Self {
            account: String::new(),
            role: String::new(),
            source: String::new(),
            action,
            target: Target::none(),
            bed: None,
            old_value: None,
            new_value: None,
            outcome: Outcome::Success,
            reason: None,
        }
    }

    /// Who did it: account, role and source address.
    pub fn by(
        mut self,
        account: impl Into<String>,
        role: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        self.account = account.into();
        self.role = role.into();
        self.source = source.into();
        self
    }

    pub fn target(mut self, kind: TargetKind, id: impl Into<String>) -> Self {
        self.target = Target::new(kind, id);
        self
    }

    pub fn bed(mut self, bed: impl Into<String>) -> Self {
        self.bed = Some(bed.into());
        self
    }

    /// Old and new values (as text; `None` when there was none / is none).
    pub fn values(mut self, old: Option<String>, new: Option<String>) -> Self {
        self.old_value = old;
        self.new_value = new;
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// `gateway_start` of the config file at `config_path` whose bytes are `config_bytes`:
    /// target `config`, new value `sha256:<hex>`.
    pub fn gateway_start(config_path: &str, config_bytes: &[u8]) -> Self {
        Self::new(Action::GatewayStart)
            .target(TargetKind::Config, config_path)
            .values(None, Some(format!("sha256:{}", sha256_hex(config_bytes))))
    }

    /// `adt_applied`: an ADT event from `sender` (MSH-3 sending application) at `peer`, applied
    /// to `bed` (`event` e.g. `A01`, `patient` the patient id).
    pub fn adt_applied(sender: &str, peer: &str, event: &str, bed: &str, patient: &str) -> Self {
        Self::new(Action::AdtApplied)
            .by(sender, "adt", peer)
            .target(TargetKind::Patient, patient)
            .bed(bed)
            .values(None, Some(event.to_owned()))
    }

    /// `patient_read`: `account` (with `role`, from `source`) read `what` (e.g. `/api/beds`)
    /// returning data of `patient` (a patient id, or `*` for a list).
    pub fn patient_read(
        account: &str,
        role: &str,
        source: &str,
        what: &str,
        patient: &str,
    ) -> Self {
        Self::new(Action::PatientRead)
            .by(account, role, source)
            .target(TargetKind::Patient, patient)
            .values(None, Some(what.to_owned()))
    }
}

/// One entry as kept in `audit_log`: the caller's entry plus sequence, time, chain and signature.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// 1, 2, 3... without gaps.
    pub seq: u64,
    /// UTC, microseconds since the Unix epoch, from the gateway clock.
    pub time_us: i64,
    /// Whether the gateway clock was synchronised when the entry was written.
    pub clock_synced: bool,
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// `hash` of the entry before (all zero for seq 1).
    #[serde(serialize_with = "ser_hex")]
    pub prev_hash: [u8; 32],
    /// SHA-256 of the canonical encoding (module docs).
    #[serde(serialize_with = "ser_hex")]
    pub hash: [u8; 32],
    /// Id of the key that signed (`icu_cloud_bridge::signing::key_id_of`).
    pub key_id: String,
    /// ed25519 over the 32 bytes of `hash`.
    #[serde(serialize_with = "ser_hex")]
    pub signature: [u8; 64],
}

impl AuditRecord {
    /// The record as forwarded to Kafka (`icu.v1.AuditEntry`, every stored field).
    pub fn to_proto(&self) -> icu_protos::v1::AuditEntry {
        let e = &self.entry;
        icu_protos::v1::AuditEntry {
            seq: self.seq,
            time_us: self.time_us,
            clock_synced: self.clock_synced,
            account: e.account.clone(),
            role: e.role.clone(),
            source: e.source.clone(),
            action: e.action.as_str().to_owned(),
            target_kind: e.target.kind.as_str().to_owned(),
            target_id: e.target.id.clone(),
            bed: e.bed.clone(),
            old_value: e.old_value.clone(),
            new_value: e.new_value.clone(),
            outcome: e.outcome.as_str().to_owned(),
            reason: e.reason.clone(),
            prev_hash: self.prev_hash.to_vec(),
            hash: self.hash.to_vec(),
            key_id: self.key_id.clone(),
            signature: self.signature.to_vec(),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Lowercase hex SHA-256 of `bytes` (e.g. of the config file for `gateway_start`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn ser_hex<S: serde::Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}
