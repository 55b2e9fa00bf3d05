//! Roles and risk tiers. A role grants each tier outright, with a human's approval, or not at all;
//! a principal's binding may narrow it to a host selector (its scope).

use std::fmt;

/// How risky an action or method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Reads state; changes nothing.
    Observe,
    /// Changes the state of hosts or jobs (restart a service, cancel a job).
    Control,
    /// Changes who may do what, or anything equivalent to root.
    Admin,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Control => "control",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job action risks: its tier, whether it runs arbitrary commands, and whether it
/// reaches beyond the fleet (a channel out for whatever the requester has read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Risk {
    pub tier: Tier,
    pub exec: bool,
    pub egress: bool,
}

/// How a role holds a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    No,
    /// Allowed once a different human who holds it outright approves.
    WithApproval,
    Yes,
}

/// A role: grants per tier, for exec, and whether its holders may approve others' jobs.
#[derive(Debug, PartialEq, Eq)]
pub struct Role {
    pub name: &'static str,
    pub observe: Grant,
    pub control: Grant,
    pub admin: Grant,
    pub exec: Grant,
    /// Actions that reach outside the fleet (HTTP, DNS, TLS, ping, registries).
    pub egress: Grant,
    pub may_approve: bool,
}

pub const ROLES: &[Role] = &[
    Role {
        name: "admin",
        observe: Grant::Yes,
        control: Grant::Yes,
        admin: Grant::Yes,
        exec: Grant::Yes,
        egress: Grant::Yes,
        may_approve: true,
    },
    Role {
        name: "operator",
        observe: Grant::Yes,
        control: Grant::Yes,
        admin: Grant::No,
        exec: Grant::Yes,
        egress: Grant::Yes,
        may_approve: true,
    },
    Role {
        name: "viewer",
        observe: Grant::Yes,
        control: Grant::No,
        admin: Grant::No,
        exec: Grant::No,
        egress: Grant::Yes,
        may_approve: false,
    },
    // The MCP bridge's default: observe freely, everything else only with a human's approval.
    // That includes observe actions that reach outside the fleet: an assistant that follows
    // text planted in a log could otherwise send what it read anywhere.
    Role {
        name: "mcp",
        observe: Grant::Yes,
        control: Grant::WithApproval,
        admin: Grant::WithApproval,
        exec: Grant::WithApproval,
        egress: Grant::WithApproval,
        may_approve: false,
    },
];

impl Role {
    pub fn named(name: &str) -> Option<&'static Role> {
        ROLES.iter().find(|r| r.name == name)
    }

    pub fn names() -> String {
        ROLES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
    }

    pub fn tier(&self, tier: Tier) -> Grant {
        match tier {
            Tier::Observe => self.observe,
            Tier::Control => self.control,
            Tier::Admin => self.admin,
        }
    }

    /// The weakest grant among everything `risk` needs.
    pub fn grant(&self, risk: Risk) -> Grant {
        let mut grant = self.tier(risk.tier);
        if risk.exec {
            grant = grant.min(self.exec);
        }
        if risk.egress {
            grant = grant.min(self.egress);
        }
        grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_follow_the_role_table() {
        let exec = Risk { tier: Tier::Control, exec: true, egress: false };
        let restart = Risk { tier: Tier::Control, exec: false, egress: false };
        let http = Risk { tier: Tier::Observe, exec: false, egress: true };
        let viewer = Role::named("viewer").expect("viewer");
        let mcp = Role::named("mcp").expect("mcp");
        let operator = Role::named("operator").expect("operator");
        assert_eq!(viewer.grant(exec), Grant::No);
        assert_eq!(mcp.grant(exec), Grant::WithApproval);
        assert_eq!(mcp.grant(Risk { tier: Tier::Observe, exec: false, egress: false }), Grant::Yes);
        assert_eq!(mcp.grant(http), Grant::WithApproval, "an assistant's egress waits for a human");
        assert_eq!(viewer.grant(http), Grant::Yes);
        assert_eq!(operator.grant(http), Grant::Yes);
        assert_eq!(operator.grant(exec), Grant::Yes);
        assert_eq!(operator.grant(restart), Grant::Yes);
        assert_eq!(operator.tier(Tier::Admin), Grant::No);
        assert!(Role::named("root").is_none());
    }
}
