//! Roles and what each may do: the one table every HTTP endpoint is checked against.
//!
//! | permission      | viewer | nurse | physician | biomed | service |
//! |-----------------|:------:|:-----:|:---------:|:------:|:-------:|
//! | `Read`          |   ✓    |   ✓   |     ✓     |   ✓    |    ✓    |
//! | `Acknowledge`   |        |   ✓   |     ✓     |        |         |
//! | `Silence`       |        |   ✓   |     ✓     |        |         |
//! | `ChangeLimits`  |        |       |     ✓     |        |         |
//! | `Metrics`       |        |       |           |   ✓    |    ✓    |
//! | `Administer`    |        |       |           |   ✓    |         |
//! | `BreakGlass`    |   ✓    |   ✓   |           |   ✓    |         |
//!
//! `Read` covers every read of the unit and of patient data (beds, alarms, events, limits,
//! devices, status); each such read by a person or a token is written to the audit trail.
//! `Administer` covers users, tokens, devices, config and keys (the biomed engineer's work).
//! `BreakGlass` is the emergency elevation of a person to the physician's clinical permissions
//! for a limited time with a mandatory reason; a service token can never break glass, and a
//! physician has nothing to elevate to.

use std::fmt;
use std::str::FromStr;

/// A role an account or a token holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Nurse,
    Physician,
    Biomed,
    /// Machines: API tokens for `/metrics` and the read-only API. Never a person's login.
    Service,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Read,
    Acknowledge,
    Silence,
    ChangeLimits,
    Metrics,
    Administer,
    BreakGlass,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Nurse,
        Role::Physician,
        Role::Biomed,
        Role::Service,
    ];
    /// The roles a person's account may hold (`service` is for tokens only).
    pub const PERSON: [Role; 4] = [Role::Viewer, Role::Nurse, Role::Physician, Role::Biomed];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Nurse => "nurse",
            Role::Physician => "physician",
            Role::Biomed => "biomed",
            Role::Service => "service",
        }
    }

    /// Whether this role grants `p` (the table in the module doc).
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        matches!(
            (self, p),
            (_, Read)
                | (Role::Nurse | Role::Physician, Acknowledge | Silence)
                | (Role::Physician, ChangeLimits)
                | (Role::Biomed | Role::Service, Metrics)
                | (Role::Biomed, Administer)
                | (Role::Viewer | Role::Nurse | Role::Biomed, BreakGlass)
        )
    }

    /// The clinical permissions a break-glass elevation adds (the physician's).
    pub fn break_glass_grants(p: Permission) -> bool {
        matches!(
            p,
            Permission::Acknowledge | Permission::Silence | Permission::ChangeLimits
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role '{s}' (one of viewer, nurse, physician, biomed, service)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_is_what_the_module_doc_says() {
        use Permission::*;
        let table = [
            (Role::Viewer, vec![Read, BreakGlass]),
            (Role::Nurse, vec![Read, Acknowledge, Silence, BreakGlass]),
            (
                Role::Physician,
                vec![Read, Acknowledge, Silence, ChangeLimits],
            ),
            (Role::Biomed, vec![Read, Metrics, Administer, BreakGlass]),
            (Role::Service, vec![Read, Metrics]),
        ];
        let all = [
            Read,
            Acknowledge,
            Silence,
            ChangeLimits,
            Metrics,
            Administer,
            BreakGlass,
        ];
        for (role, granted) in table {
            for p in all {
                assert_eq!(role.allows(p), granted.contains(&p), "{role} {p:?}");
            }
        }
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
